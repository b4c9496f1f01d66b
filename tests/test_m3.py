"""bge-m3's dense, sparse and ColBERT outputs from one pass, against FlagEmbedding.

The model is a tiny random XLM-RoBERTa with random heads in FlagEmbedding's layout
(:mod:`tests.m3_models`); the reference is FlagEmbedding's own ``BGEM3FlagModel.encode``
on the same folder. Our side is the exported ONNX graph served through the whole core path
(tokenizer, scheduler, ONNX Runtime, reducers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.m3_models import flag_m3_model, write_xlmr_m3
from tests.models import ExportedModel, export_hf
from trt_async.backends.base import COLBERT_OUTPUT, SPARSE_OUTPUT
from trt_async.core.config import Config, ModelConfig
from trt_async.core.errors import MissingHead
from trt_async.core.model import ServedModel
from trt_async.core.multivector import (
    DENSE_OUTPUT,
    SparseVector,
    colbert_vectors,
    sparse_reducer,
)
from trt_async.core.registry import ModelRegistry
from trt_async.tools.export import ExportError, export_model

torch = pytest.importorskip("torch", reason="references need the export extra")
pytest.importorskip("transformers", reason="references need the export extra")

TEXTS = [
    "hello world hello hello",
    "The quick brown fox jumps over the lazy dog.",
    "機器學習模型把句子轉成向量。",
    "the the the cat cat on the mat",
    "Graphics cards run thousands of small programs at the same time. " * 6,
    "x",
    "A reranker scores how well a document answers a query; 重排序模型為查詢和文件的配對打分。",
]
#: What the note reports and what bge-m3 users compare at: cosine of each vector.
MIN_COSINE = 0.999


@pytest.fixture(scope="session")
def m3_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    root = tmp_path_factory.mktemp("m3")
    hf_dir = write_xlmr_m3(root / "hf")
    return export_hf(hf_dir, "embed", root / "model")


@pytest.fixture(scope="session")
def flag_reference(m3_model: ExportedModel) -> dict[str, Any]:
    flag = flag_m3_model(m3_model.hf_dir)
    out: dict[str, Any] = flag.encode(
        TEXTS, max_length=128, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    return out


async def _served(path: Path, **options: Any) -> AsyncIterator[ServedModel]:
    config = Config()
    config.embedding_models["m3"] = ModelConfig(model_path=str(path), **options)
    registry = ModelRegistry(config)
    await registry.start()
    try:
        yield registry.get("m3")
    finally:
        await registry.close()


def run_served(path: Path, fn: Any, **options: Any) -> Any:
    async def main() -> Any:
        async for model in _served(path, **options):
            return await fn(model)

    return asyncio.run(main())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.asarray((a * b).sum(axis=-1))


def test_export_writes_one_graph_with_three_heads(m3_model: ExportedModel) -> None:
    import onnx

    graph = onnx.load(str(m3_model.model_dir / "model.onnx")).graph
    names = [o.name for o in graph.output]
    assert names[:3] == [DENSE_OUTPUT, SPARSE_OUTPUT, COLBERT_OUTPUT]
    manifest = json.loads((m3_model.model_dir / "trt_async.json").read_text())
    assert manifest["outputs"] == names
    assert manifest["output"] == DENSE_OUTPUT
    # cls <s>=0, pad <pad>=1, eos </s>=2, unk <unk>=3: what FlagEmbedding leaves out.
    assert manifest["sparse_skip_ids"] == [0, 1, 2, 3]


def test_three_outputs_match_flagembedding(
    m3_model: ExportedModel, flag_reference: dict[str, Any]
) -> None:
    async def go(model: ServedModel) -> Any:
        return await model.embed(TEXTS, heads=("sparse", "colbert"))

    result = run_served(m3_model.model_dir, go)
    dense_cos = cosines(result.vectors, flag_reference["dense_vecs"])
    assert dense_cos.min() >= MIN_COSINE, dense_cos
    for i, text in enumerate(TEXTS):
        ours: SparseVector = result.heads["sparse"][i]
        ref = {int(k): float(v) for k, v in flag_reference["lexical_weights"][i].items()}
        assert set(ours.as_dict()) == set(ref), text
        keys = sorted(ref)
        np.testing.assert_allclose(
            [ours.as_dict()[k] for k in keys], [ref[k] for k in keys], rtol=1e-3, atol=1e-4
        )
        vecs = result.heads["colbert"][i]
        ref_vecs = flag_reference["colbert_vecs"][i]
        assert vecs.shape == ref_vecs.shape, text
        assert cosines(vecs, ref_vecs).min() >= MIN_COSINE, text
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    # Repeated tokens appear once, with their largest weight: the keys are unique and the
    # inputs really did repeat tokens.
    first = result.heads["sparse"][0]
    assert len(np.unique(first.ids)) == len(first.ids)


def test_dense_only_request_skips_the_other_heads(m3_model: ExportedModel) -> None:
    async def go(model: ServedModel) -> Any:
        plain = await model.embed(TEXTS)
        mixed = await asyncio.gather(
            model.embed(TEXTS[:3]), model.embed(TEXTS[3:], heads=("sparse",))
        )
        return plain, mixed

    plain, (first, second) = run_served(m3_model.model_dir, go)
    assert plain.heads == {}
    assert first.heads == {}
    assert list(second.heads) == ["sparse"] and len(second.heads["sparse"]) == len(TEXTS) - 3
    np.testing.assert_allclose(
        np.concatenate([first.vectors, second.vectors]), plain.vectors, atol=1e-6
    )


def test_missing_head_is_a_clear_error(minilm_model_dir: Path) -> None:
    async def go(model: ServedModel) -> Any:
        with pytest.raises(MissingHead, match=r"no sparse output.*sparse_linear\.pt"):
            await model.embed(["hi"], heads=("sparse",))
        return await model.embed(["hi there", "a b c d"], heads=("tokens",))

    result = run_served(minilm_model_dir, go)
    lengths = [len(v) for v in result.heads["tokens"]]
    assert lengths[0] < lengths[1]  # each item trimmed to its own tokens, specials included
    assert result.heads["tokens"][0].shape[1] == 384


def test_reducers_follow_flagembeddings_rules() -> None:
    """Hand-made batch: max over repeats, non-positive and special ids dropped, padding
    ignored; ColBERT drops the CLS position and the padding, and normalises."""
    ids = np.array([[0, 7, 9, 7, 2, 1], [0, 3, 7, 2, 1, 1]])
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    weights = np.array([[5.0, 0.2, 0.0, 0.7, 4.0, 9.0], [5.0, 3.0, 0.4, 1.0, 9.0, 9.0]])
    out = sparse_reducer([0, 1, 2, 3])(weights, ids, mask)
    assert [v.as_dict() for v in out] == [  # type: ignore[attr-defined]
        {7: pytest.approx(0.7)},
        {7: pytest.approx(0.4)},
    ]
    vecs = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3) + 1
    colbert = colbert_vectors(vecs, ids, mask)
    assert [c.shape for c in colbert] == [(4, 3), (3, 3)]  # type: ignore[attr-defined]
    expected = vecs[1, 1:4] / np.linalg.norm(vecs[1, 1:4], axis=1, keepdims=True)
    np.testing.assert_allclose(colbert[1], expected, rtol=1e-6)


def test_export_heads_option(tmp_path: Path, m3_model: ExportedModel) -> None:
    hf_dir = m3_model.hf_dir
    plain = export_model(hf_dir, "embed", tmp_path / "plain", progress=False, heads="none")
    assert plain.outputs == ["last_hidden_state"] and plain.sparse_skip_ids is None
    half = tmp_path / "half"
    half.mkdir()
    for item in hf_dir.iterdir():
        if item.is_file() and item.name != "sparse_linear.pt":
            (half / item.name).write_bytes(item.read_bytes())
    with pytest.raises(ExportError, match=r"sparse_linear\.pt"):
        export_model(half, "embed", tmp_path / "out", progress=False)
    with pytest.raises(ExportError, match="--heads m3 needs"):
        export_model(half, "embed", tmp_path / "out", progress=False, heads="m3")
