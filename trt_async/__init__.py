"""trt_async: an async server for encoder models (embeddings, rerankers, NLI).

Layers, from the wire inwards:

* ``trt_async.http``: Litestar controllers, msgspec wire schemas, error mapping.
* ``trt_async.core``: config, tokenizer, bucket grid, scheduler, heads, models.
* ``trt_async.backends``: ONNX Runtime (CPU) and TensorRT (GPU) executors.
* ``trt_async.tools``: build tools (ONNX export, TensorRT engine build).

The core never imports the HTTP layer and the scheduler never imports a backend library.
"""

__version__ = "0.1.0"
