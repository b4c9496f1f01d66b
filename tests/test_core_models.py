"""The core path (tokenizer → scheduler → ONNX Runtime → heads) against transformers.

Every number here is checked against an independent reference computed in the test:
sentence-transformers for all-MiniLM-L6-v2, transformers' own forward pass for the tiny
randomly initialised classifiers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from trt_async.backends.modelfiles import ModelDirError, ModelFiles
from trt_async.core.config import Config, ModelConfig, ModelKind
from trt_async.core.errors import OverCapacity, WrongModelKind
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel

torch = pytest.importorskip("torch", reason="references need the export extra")
transformers = pytest.importorskip("transformers", reason="references need the export extra")

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "機器學習的理論很重要",
    "Graphics cards run thousands of small programs at the same time. " * 12,
    "理論對於理解機器學習非常重要，實作經驗在機器學習中也很關鍵。" * 6,
    "short",
    "A reranker scores how well a document answers a query, and an embedding model "
    "turns each sentence into a vector that can be compared with others.",
]


async def served(
    model_dir: os.PathLike[str] | str, kind: ModelKind = ModelKind.EMBEDDING, **options: object
) -> AsyncIterator[ServedModel]:
    config = Config()
    getattr(config, kind.section)["m"] = ModelConfig(model_path=os.fspath(model_dir), **options)  # type: ignore[arg-type]
    registry = ModelRegistry(config)
    await registry.start()
    try:
        yield registry.get("m")
    finally:
        await registry.close()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def st_reference(minilm_hf_dir: Path) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers", reason="the reference (test extra)")
    model = st.SentenceTransformer(str(minilm_hf_dir), device="cpu")
    model.max_seq_length = 256
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True))


async def test_minilm_matches_sentence_transformers(minilm_model_dir, st_reference) -> None:
    async for model in served(minilm_model_dir, max_length=256):
        result = await model.embed(TEXTS)
        assert result.vectors.shape == (len(TEXTS), 384)
        cos = cosine_rows(result.vectors, st_reference)
        assert cos.min() >= 0.9999, cos
        assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


async def test_bucket_padding_never_changes_a_vector(minilm_model_dir) -> None:
    async for fine in served(minilm_model_dir, max_length=256):
        alone = np.stack([(await fine.embed([t])).vectors[0] for t in TEXTS])
    # Pad-to-max: every text shares one 256-token bucket with much longer texts.
    async for padded in served(minilm_model_dir, max_length=256, lengths=[256]):
        batched = (await padded.embed(TEXTS)).vectors
    assert cosine_rows(alone, batched).min() >= 0.99999


async def test_a_lone_request_takes_one_handoff_and_matches_the_queued_path(
    minilm_model_dir, st_reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that finds nothing waiting or running is tokenised on the lane's thread
    and run there: the tokenizer pool is not used. Its vector is sentence-transformers'
    and the one the same text gets when requests queue and share hops and batches."""
    from trt_async.core.runtime import TOKENIZE_POOL

    hops: list[object] = []
    pool_run = TOKENIZE_POOL.run

    def counted(owner: object, fn: object) -> object:
        hops.append(owner)
        return pool_run(owner, fn)  # type: ignore[arg-type]

    monkeypatch.setattr(TOKENIZE_POOL, "run", counted)
    async for model in served(minilm_model_dir, max_length=256):
        stats = model.runtime.scheduler.stats
        batches, items = sum(stats.batches.values()), stats.items_run  # the load's probe
        lone = await model.embed([TEXTS[1]])
        assert hops == []
        assert (sum(stats.batches.values()) - batches, stats.items_run - items) == (1, 1)
        assert lone.timings.tokenize_s > 0
        assert cosine_rows(lone.vectors, st_reference[1:2]).min() >= 0.9999
        # Seven requests at once: the first goes alone, the rest queue behind it.
        burst = await asyncio.gather(*(model.embed([text]) for text in TEXTS))
        assert hops, "requests that queued behind another were tokenised in the pool"
        queued = np.stack([r.vectors[0] for r in burst])
        assert cosine_rows(queued, st_reference).min() >= 0.9999
        assert np.allclose(queued[1], lone.vectors[0], atol=1e-5)


async def test_matryoshka_dimensions_renormalise(minilm_model_dir) -> None:
    async for model in served(minilm_model_dir):
        full = (await model.embed(TEXTS[:3], normalize=False)).vectors
        cut = (await model.embed(TEXTS[:3], dimensions=64)).vectors
        assert cut.shape == (3, 64)
        expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
        assert np.allclose(cut, expected, atol=1e-6)


async def test_token_level_results_over_the_budget_are_refused_before_any_batch(
    minilm_model_dir,
) -> None:
    """Every token's vector is 1.5 KiB on MiniLM: 1 MiB holds ~680 tokens. A request whose
    token-level results exceed max_request_output_mib is refused with the limit named, and
    no batch runs for it; within the budget, and dense-only, it is served."""
    async for model in served(minilm_model_dir, max_request_output_mib=1):
        small = await model.embed(TEXTS[:2], heads=("tokens",))
        assert len(small.heads["tokens"]) == 2
        batches = sum(model.runtime.scheduler.stats.batches.values())
        with pytest.raises(OverCapacity, match=r"max_request_output_mib: 1\b") as info:
            await model.embed([TEXTS[3]] * 20, heads=("tokens",))
        assert info.value.limit == 1 and info.value.size > 1
        assert sum(model.runtime.scheduler.stats.batches.values()) == batches
        dense = await model.embed([TEXTS[3]] * 20)
        assert dense.vectors.shape == (20, 384)


async def test_embedding_model_reranks_by_cosine(minilm_model_dir, st_reference) -> None:
    async for model in served(minilm_model_dir, ModelKind.RERANKER, max_length=256):
        result = await model.rerank(TEXTS[0], TEXTS[1:])
        expected = st_reference[1:] @ st_reference[0]
        assert np.allclose(result.scores, expected, atol=1e-4)
        with pytest.raises(WrongModelKind):
            await model.classify(["a text"])


def hf_logits(hf_dir: Path, inputs: Sequence[str | tuple[str, str]], max_length: int) -> np.ndarray:
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    rows = []
    with torch.no_grad():
        for x in inputs:  # one at a time: no padding in the reference at all
            args = x if isinstance(x, tuple) else (x,)
            enc = tok(*args, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**enc).logits[0].numpy())
    return np.stack(rows)


PAIRS = [
    ("what is the capital of France?", "Paris is the capital and most populous city of France."),
    ("a dog", "A dog is running across the green field. " * 5),
    ("機器學習", "理論對於理解機器學習非常重要"),
    ("The weather is lovely today, " * 8, "let us go for a walk in the park."),
]


@pytest.mark.parametrize("which", ["bert_rerank_dir", "xlmr_rerank_dir"])
async def test_cross_encoder_logits_match_transformers(which: str, request) -> None:
    exported = request.getfixturevalue(which)
    async for model in served(exported, ModelKind.RERANKER):
        expected = hf_logits(exported.hf_dir, PAIRS, model.max_length)[:, 0]
        # Mixed lengths in one request, and each pair alone.
        raw = await model.classify(PAIRS)
        assert np.abs(raw.logits[:, 0] - expected).max() < 1e-4
        for pair, want in zip(PAIRS, expected, strict=True):
            alone = await model.classify([pair])
            assert abs(float(alone.logits[0, 0]) - float(want)) < 1e-4
        # The rerank task: query against documents, sigmoid unless raw scores are asked for.
        query = "what is the capital of France?"
        docs = [d for _, d in PAIRS]
        ref = hf_logits(exported.hf_dir, [(query, d) for d in docs], model.max_length)[:, 0]
        scores = (await model.rerank(query, docs)).scores
        assert np.allclose(scores, 1 / (1 + np.exp(-ref)), atol=1e-5)
        raw_scores = (await model.rerank(query, docs, raw_scores=True)).scores
        assert np.abs(raw_scores - ref).max() < 1e-4


@pytest.mark.parametrize("which", ["bert_nli_dir", "xlmr_nli_dir"])
async def test_nli_logits_and_labels_follow_id2label(which: str, request) -> None:
    exported = request.getfixturevalue(which)
    config = json.loads((exported.hf_dir / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}
    async for model in served(exported, ModelKind.NLI):
        assert dict(model.labels) == id2label
        result = await model.classify(PAIRS)
        expected = hf_logits(exported.hf_dir, PAIRS, model.max_length)
        assert np.abs(result.logits - expected).max() < 1e-4
        assert result.predictions() == [id2label[int(i)] for i in expected.argmax(axis=1)]
        probs = result.probabilities()
        assert np.allclose(probs.sum(axis=1), 1.0)


async def test_event_loop_stays_responsive_during_a_large_batch(minilm_model_dir) -> None:
    async for model in served(minilm_model_dir, max_length=256):
        big = [TEXTS[3]] * 96  # several full 32-row batches of ~130 tokens
        lateness: list[float] = []
        job = asyncio.ensure_future(model.embed(big))
        while not job.done():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - start - 0.001)
        await job
        assert len(lateness) > 20  # the batch ran long enough to be observed
        # Tokenising and ONNX Runtime run off the loop: the ticker is never held up long.
        assert float(np.percentile(lateness, 99)) < 0.030, max(lateness)


def copy_model(src: os.PathLike[str] | str, dst: Path) -> Path:
    shutil.copytree(os.fspath(src), dst)
    return dst


def test_model_folder_errors_name_the_file_and_the_fix(minilm_model_dir, tmp_path: Path) -> None:
    no_tok = copy_model(minilm_model_dir, tmp_path / "no_tok")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match=r"tokenizer\.json: missing.*trt-async export"):
        ModelFiles.resolve(no_tok)
    no_onnx = copy_model(minilm_model_dir, tmp_path / "no_onnx")
    (no_onnx / "model.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"model\.onnx: missing.*trt-async export"):
        ModelFiles.resolve(no_onnx)
    with pytest.raises(ModelDirError, match="no such model file or folder"):
        ModelFiles.resolve(tmp_path / "nowhere")


async def test_graph_with_unknown_outputs_is_refused(minilm_model_dir, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copy(Path(os.fspath(minilm_model_dir)) / "tokenizer.json", folder)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["scores_out"], to=TensorProto.FLOAT)],
        "odd",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("scores_out", TensorProto.FLOAT, ["b", "s"])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
        folder / "model.onnx",
    )
    registry = ModelRegistry(Config(embedding_models={"odd": ModelConfig(model_path=str(folder))}))
    with pytest.raises(ModelDirError, match=r"model\.onnx: outputs \['scores_out'\].*re-export"):
        await registry.start()


@pytest.mark.slow
async def test_pooling_folded_into_the_graph_gives_the_same_vectors(
    minilm_hf_dir: Path, st_reference: np.ndarray, tmp_path: Path
) -> None:
    from trt_async.tools.export import export_model

    manifest = export_model(
        minilm_hf_dir, "embed", tmp_path / "pooled", progress=False, pool_in_graph=True
    )
    assert (manifest.output, manifest.pooling) == ("sentence_embedding", "none")
    async for model in served(tmp_path / "pooled", max_length=256):
        assert model.runtime.io.output == "sentence_embedding"
        result = await model.embed(TEXTS)
        assert cosine_rows(result.vectors, st_reference).min() >= 0.9999
        cut = (await model.embed(TEXTS[:2], dimensions=32)).vectors
        assert np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)


class BlockingTokens:
    """Stands in for one model's tokenizer: each ``tokens`` call blocks until released, as
    a large text's tokenisation holds a thread."""

    def __init__(self, calls: int) -> None:
        self.release = [threading.Event() for _ in range(calls)]
        self.started = 0
        self._lock = threading.Lock()

    def tokens(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[object]]:
        with self._lock:
            n = self.started
            self.started += 1
        self.release[n].wait(timeout=10)
        return [[] for _ in texts]


async def test_one_models_tokenisation_flood_does_not_stall_another(
    minilm_model_dir, bert_rerank_dir
) -> None:
    # Six long tokenisation jobs for model a occupy both tokeniser threads and queue four
    # more; a request to model b then waits for one of a's running jobs to end, not for all
    # of a's queued ones (they stay blocked here until the test releases them).
    config = Config()
    config.embedding_models["a"] = ModelConfig(model_path=os.fspath(minilm_model_dir))
    config.reranking_models["b"] = ModelConfig(model_path=os.fspath(bert_rerank_dir))
    registry = ModelRegistry(config)
    await registry.start()
    a, b = registry.get("a"), registry.get("b")
    blocking = BlockingTokens(6)
    a.runtime.tokenizer = blocking  # type: ignore[assignment]
    flood = [asyncio.ensure_future(a.tokenize(["long text"])) for _ in range(6)]
    try:
        for _ in range(500):
            if blocking.started == 2:
                break
            await asyncio.sleep(0.01)
        assert blocking.started == 2
        other = asyncio.ensure_future(b.tokenize(["hello world"]))
        await asyncio.sleep(0.05)
        blocking.release[0].set()
        rows = await asyncio.wait_for(other, timeout=3)
        assert [t.text for t in rows[0]][1:3] == ["hello", "world"]
        assert blocking.started <= 3  # b went before a's queued jobs
    finally:
        for event in blocking.release:
            event.set()
        await asyncio.gather(*flood)
        await registry.close()
