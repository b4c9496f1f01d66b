"""The bucket grid, batch budget and start-up work for 8k-32k-token models (decoders).

Attention's scores grow with rows x length², so the ONNX Runtime grid bounds that too;
lengths past 8192 step by a bounded fraction of the length; start-up warms a bounded
number of tokens; and a folder's default length is capped however long its table is.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from trt_async.backends.modelfiles import MAX_DEFAULT_LENGTH, ModelFiles, default_max_length
from trt_async.backends.onnxruntime import ONNXRUNTIME_SPEC, WARMUP_TOKENS, warmup_lengths
from trt_async.backends.shapes import BucketGrid
from trt_async.core.config import ModelConfig
from trt_async.core.runtime import bucket_grid


@pytest.mark.parametrize("max_length", [8192, 32768, 131072])
def test_long_lengths_pad_by_a_bounded_fraction(max_length: int) -> None:
    lengths = ONNXRUNTIME_SPEC.lengths(max_length)
    assert lengths[-1] == max_length and len(lengths) < 320
    for shorter, longer in itertools.pairwise(lengths):
        # A text one token past a length pads to the next: at most 12.5 % more past 256.
        if shorter >= 256:
            assert (longer - shorter) / (shorter + 1) <= 0.125, (shorter, longer)


def test_a_long_batch_is_bounded_by_its_attention_not_only_its_tokens() -> None:
    grid = bucket_grid(ModelConfig(model_path="x"), ONNXRUNTIME_SPEC, 32768)
    attention = ONNXRUNTIME_SPEC.max_batch_attention
    assert attention is not None
    for bucket in grid.buckets():
        assert bucket.tokens <= grid.max_batch_tokens
        assert bucket.batch == 1 or bucket.batch * bucket.length**2 <= attention
    assert [grid.capacity(n) for n in (512, 1024, 2048, 4096, 8192, 32768)] == [32, 16, 4, 1, 1, 1]
    # Short models' grids are what they were: the token budget binds first.
    short = bucket_grid(ModelConfig(model_path="x"), ONNXRUNTIME_SPEC, 512)
    assert [short.capacity(n) for n in (64, 256, 512)] == [32, 32, 32]
    assert BucketGrid([1, 2, 4], [1024], 4096).capacity(1024) == 4  # no attention bound


def test_start_up_warms_a_bounded_number_of_tokens() -> None:
    long = ONNXRUNTIME_SPEC.lengths(32768)
    warmed = warmup_lengths(long)
    assert sum(warmed) <= WARMUP_TOKENS and warmed == sorted(long)[: len(warmed)]
    for short in (256, 512):  # all-MiniLM-L6-v2's grids: every length, as before
        assert warmup_lengths(ONNXRUNTIME_SPEC.lengths(short)) == ONNXRUNTIME_SPEC.lengths(short)
    assert warmup_lengths([40000]) == [40000]  # one length at least


def test_a_folders_default_length_is_capped(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen3", "max_position_embeddings": 40960})
    )
    assert default_max_length(ModelFiles.resolve(tmp_path)) == MAX_DEFAULT_LENGTH
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32768}))
    assert default_max_length(ModelFiles.resolve(tmp_path)) == MAX_DEFAULT_LENGTH
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    assert default_max_length(ModelFiles.resolve(tmp_path)) == 512
