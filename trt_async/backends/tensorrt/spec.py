"""What the TensorRT backend declares about itself (imports neither TensorRT nor CUDA).

Lengths are coarser than on the CPU and batch sizes are powers of two: each bucket is a
captured CUDA graph with its own memory, and a few padded rows or tokens cost little on a
GPU. A GPU batch costs about the same up to thousands of tokens, so its fixed cost, the
launch, dominates: 4096 token-equivalents.
"""

from __future__ import annotations

from trt_async.backends.base import BackendSpec, CounterSpec

#: Batches served by CUDA graph replay and by plain ``execute_async_v3``.
GRAPH_REPLAYS = CounterSpec(
    "gpu_launches",
    "GPU batches by how they ran (graph replay or plain enqueue)",
    (("mode", "graph"),),
)
PLAIN_ENQUEUES = CounterSpec(
    "gpu_launches",
    "GPU batches by how they ran (graph replay or plain enqueue)",
    (("mode", "enqueue"),),
)

TENSORRT_SPEC = BackendSpec(
    name="tensorrt",
    length_steps=(16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192),
    batch_sizes=(1, 2, 4, 8, 16, 32, 64),
    batch_overhead_tokens=4096,
    dtypes={"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"},
    counters=(GRAPH_REPLAYS, PLAIN_ENQUEUES),
)
