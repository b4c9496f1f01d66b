"""bge-m3's dense, sparse and ColBERT outputs from one pass, against FlagEmbedding.

The model is a tiny random XLM-RoBERTa with random heads in FlagEmbedding's layout
(:mod:`tests.m3_models`); the reference is FlagEmbedding's own ``BGEM3FlagModel.encode``
on the same folder. Our side is the exported ONNX graph served through the whole core path
(tokenizer, scheduler, ONNX Runtime, reducers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.http_fixtures import serving
from tests.m3_models import flag_m3_model, write_xlmr_m3
from tests.models import ExportedModel, export_hf
from trt_async.backends.base import COLBERT_OUTPUT, SPARSE_OUTPUT
from trt_async.core.config import Config, ModelConfig
from trt_async.core.errors import MissingHead
from trt_async.core.multivector import (
    DENSE_OUTPUT,
    SparseVector,
    colbert_vectors,
    sparse_reducer,
)
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel
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


# -- over HTTP: a real server process, the Cohere SDK, TEI routes, the seed route -----------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, minilm_model_dir: Path, m3_model: ExportedModel
) -> Iterator[str]:
    """``trt-async serve`` with the embedded default and the tiny bge-m3, on loopback."""
    root = tmp_path_factory.mktemp("m3_server")
    config = root / "config.yaml"
    config.write_text(
        "embedding_models:\n"
        f"  all-MiniLM-L6-v2:\n    model_path: {str(minilm_model_dir)!r}\n"
        f"  m3:\n    model_path: {str(m3_model.model_dir)!r}\n"
        "server:\n  drain_seconds: 5\n",
        encoding="utf-8",
    )
    with serving(config, root / "server.log") as url:
        yield url


def test_cohere_sdk_v2_embeds_every_type(server: str, minilm_model_dir: Path) -> None:
    cohere = pytest.importorskip("cohere")
    from sentence_transformers.util.quantization import quantize_embeddings

    client = cohere.ClientV2(api_key="unused", base_url=server)
    texts = ["hello world", "機器學習模型把句子轉成向量。", "The museum opens at nine."]
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    response = client.embed(
        texts=texts, model="all-MiniLM-L6-v2", input_type="search_document", embedding_types=types
    )
    emb = response.embeddings
    floats = np.asarray(emb.float_, dtype=np.float32)
    assert floats.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(floats, axis=1), 1.0, rtol=1e-5)
    # Sign bits, packed 8 per byte, bit for bit as sentence-transformers packs them.
    for kind in ("binary", "ubinary"):
        ours = np.asarray(getattr(emb, kind))
        expected = quantize_embeddings(floats, precision=kind)
        assert ours.shape == (3, 48)
        np.testing.assert_array_equal(ours, expected.astype(np.int64))
    # int8/uint8 use the model's stored calibration vectors: the same bytes as
    # sentence-transformers given those vectors (normalised as the request's are).
    with np.load(minilm_model_dir / "calibration.npz") as data:
        calibration = data["embeddings"]
    assert calibration.shape[1] == 384 and len(calibration) >= 100
    calibration = calibration / np.linalg.norm(calibration, axis=1, keepdims=True)
    for kind in ("int8", "uint8"):
        ours = np.asarray(getattr(emb, kind))
        expected = quantize_embeddings(floats, precision=kind, calibration_embeddings=calibration)
        np.testing.assert_array_equal(ours, expected.astype(np.int64))
    assert response.meta.billed_units.input_tokens > 0

    short = client.embed(
        texts=texts[:1],
        model="all-MiniLM-L6-v2",
        input_type="search_query",
        embedding_types=["float", "ubinary"],
        output_dimension=64,
    )
    vec = np.asarray(short.embeddings.float_, dtype=np.float32)
    assert vec.shape == (1, 64)
    np.testing.assert_allclose(vec[0], floats[0, :64] / np.linalg.norm(floats[0, :64]), atol=1e-6)
    assert np.asarray(short.embeddings.ubinary).shape == (1, 8)


def test_cohere_sdk_v1_embed(server: str) -> None:
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key="unused", base_url=server)
    plain = client.embed(texts=["a cat", "a dog"], model="all-MiniLM-L6-v2")
    assert plain.response_type == "embeddings_floats"
    assert np.asarray(plain.embeddings).shape == (2, 384)
    typed = client.embed(
        texts=["a cat"], model="all-MiniLM-L6-v2", embedding_types=["int8", "binary"]
    )
    assert typed.response_type == "embeddings_by_type"
    assert np.asarray(typed.embeddings.int8).shape == (1, 384)
    assert np.asarray(typed.embeddings.binary).min() >= -128


def test_cohere_errors_are_cohere_shaped(server: str) -> None:
    cohere = pytest.importorskip("cohere")
    with httpx.Client(base_url=server, timeout=30) as http:
        bad = http.post("/v2/embed", json={"texts": ["a"], "embedding_types": ["int4"]})
        assert bad.status_code == 422
        assert set(bad.json()) == {"message"} and "int4" in bad.json()["message"]
        bad = http.post("/v1/embed", json={"texts": ["a"], "truncate": "MIDDLE"})
        assert bad.status_code == 422 and "truncate" in bad.json()["message"]
        long = http.post("/v2/embed", json={"texts": ["word " * 400], "truncate": "NONE"})
        assert long.status_code == 422 and "tokens" in long.json()["message"]
        ok = http.post("/v2/embed", json={"texts": ["word " * 400], "truncate": "START"})
        assert ok.status_code == 200
    client = cohere.ClientV2(api_key="unused", base_url=server)
    with pytest.raises(cohere.core.api_error.ApiError) as info:
        client.embed(
            texts=["a"],
            model="all-MiniLM-L6-v2",
            input_type="search_query",
            embedding_types=["float", "int2"],  # type: ignore[list-item]
        )
    assert info.value.status_code == 422


def test_tei_sparse_and_all_routes(
    server: str, flag_reference: dict[str, Any], m3_model: ExportedModel
) -> None:
    with httpx.Client(base_url=server, timeout=60) as http:
        r = http.post("/embed_sparse", json={"inputs": TEXTS, "model": "m3"})
        assert r.status_code == 200, r.text
        for row, ref in zip(r.json(), flag_reference["lexical_weights"], strict=True):
            assert {x["index"] for x in row} == {int(k) for k in ref}
            assert [x["index"] for x in row] == sorted(x["index"] for x in row)
            for x in row:
                assert x["value"] == pytest.approx(float(ref[str(x["index"])]), rel=1e-3)
        missing = http.post("/embed_sparse", json={"inputs": "hi", "model": "all-MiniLM-L6-v2"})
        assert missing.status_code == 400
        assert missing.json()["error_type"] == "Validation"
        assert "sparse" in missing.json()["error"]
        everything = http.post("/embed_all", json={"inputs": ["hi", "hello there friend"]})
        assert everything.status_code == 200
        rows = everything.json()
        assert [len(r[0]) for r in rows] == [384, 384] and len(rows[0]) < len(rows[1])
        m3_all = http.post("/embed_all?model=m3", json={"inputs": ["hello world"]})
        assert m3_all.status_code == 200 and len(m3_all.json()[0][0]) == 32


def test_seed_infer_switches(
    server: str, flag_reference: dict[str, Any], m3_model: ExportedModel
) -> None:
    with httpx.Client(base_url=server, timeout=60) as http:
        plain = http.post("/infer/m3", json={"documents": TEXTS}).json()
        assert set(plain) == {"embeddings", "elapsed_ms"}
        assert (
            cosines(np.array(plain["embeddings"]), flag_reference["dense_vecs"]).min() >= MIN_COSINE
        )
        body = {"documents": TEXTS, "return_sparse": True, "return_colbert_vecs": True}
        full = http.post("/infer/m3", json=body).json()
        assert set(full) == {"embeddings", "lexical_weights", "colbert_vecs", "elapsed_ms"}
        for ours, ref in zip(
            full["lexical_weights"], flag_reference["lexical_weights"], strict=True
        ):
            assert set(ours) == set(ref)
        for ours, ref in zip(full["colbert_vecs"], flag_reference["colbert_vecs"], strict=True):
            assert cosines(np.array(ours), ref).min() >= MIN_COSINE
        sparse_only = {"documents": TEXTS[:1], "return_dense": False, "return_sparse": True}
        tokens = http.post("/infer/m3", json={**sparse_only, "sparse_keys": "token"}).json()
        assert set(tokens) == {"lexical_weights", "elapsed_ms"}
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(m3_model.hf_dir / "tokenizer.json"))
        ref_ids = flag_reference["lexical_weights"][0]
        assert set(tokens["lexical_weights"][0]) == {vocab.id_to_token(int(i)) for i in ref_ids}
        nothing = http.post("/infer/m3", json={"documents": ["a"], "return_dense": False})
        assert nothing.status_code == 422 and "return_sparse" in nothing.json()["detail"]
        openai = http.post("/v1/embeddings", json={"model": "m3", "input": TEXTS}).json()
        got = np.array([d["embedding"] for d in openai["data"]])
        np.testing.assert_allclose(got, np.array(plain["embeddings"]), atol=1e-6)
