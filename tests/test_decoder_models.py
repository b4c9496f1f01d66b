"""Decoder embedders and LLM rerankers, exported and run through the server's runtime.

Each family is a tiny randomly initialised transformers model (trt_async/tools/tiny_decoders.py).
The references are independent of the code under test: sentence-transformers' own
``encode`` for the embedders (with and without prompts), and for the rerankers the model
cards' and libraries' input building written out here with transformers' tokenizer, run
through the full causal LM in torch, one pair at a time (no padding at all).
Our side is the exported graph on ONNX Runtime behind ``create_runtime`` and its
scheduler, fed by :mod:`trt_async.core.prompting`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.decoder_models import (
    PROMPTS,
    Family,
    reference_ids,
    reference_scores,
    write_decoder_embedder,
    write_llm_reranker,
)
from trt_async.backends.modelfiles import ExportManifest, ModelFiles
from trt_async.core import heads
from trt_async.core.config import ModelConfig
from trt_async.core.errors import InputTooLong
from trt_async.core.prompting import encode_llm_pairs, encode_prompted, prompt_length
from trt_async.core.runtime import ModelRuntime, create_runtime
from trt_async.core.templates import PromptTooLong, instruction_for, pair_texts

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch", reason="exporting needs the export extra")
transformers = pytest.importorskip("transformers", reason="exporting needs the export extra")

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
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "The cat is sleeping on the warm windowsill.",
    "巴黎是法國的首都，也是人口最多的城市。",
    "The river flows slowly through the old town. " * 10,
    "yes",
]


def export_folder(hf_dir: Path, out: Path, **options: Any) -> ExportManifest:
    from trt_async.tools.export import export_model

    task = options.pop("task", "embed")
    return export_model(hf_dir, task, out, progress=False, **options)


@pytest.fixture(scope="module")
def embedders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(Hugging Face folder, exported folder) per case: Qwen3 (server-side pooling), Qwen2
    (pooled in the graph), Mistral, Llama (pooled in the graph), and Qwen2 with
    bidirectional attention."""
    root = tmp_path_factory.mktemp("decoder-embedders")
    cases: dict[str, tuple[Family, dict[str, Any], dict[str, Any]]] = {
        "qwen3": ("qwen3", {}, {}),
        "qwen2-pooled": ("qwen2", {}, {"pool_in_graph": True}),
        "mistral": ("mistral", {}, {}),
        "llama": ("llama", {}, {"pool_in_graph": True}),
        "qwen2-bidirectional": ("qwen2", {"bidirectional": True}, {}),
    }
    out = {}
    for name, (family, build, options) in cases.items():
        hf = write_decoder_embedder(root / f"{name}-hf", family, seed=len(out), **build)
        export_folder(hf, root / name, **options)
        out[name] = (hf, root / name)
    return out


async def started(model_dir: Path, **options: Any) -> AsyncIterator[ModelRuntime]:
    files = ModelFiles.resolve(model_dir)
    runtime = create_runtime(files, ModelConfig(model_path=str(model_dir), **options))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


async def vectors(runtime: ModelRuntime, texts: Sequence[str], prompt: str = "") -> np.ndarray:
    items = encode_prompted(runtime.tokenizer, texts, prompt, truncate=True)
    rows: np.ndarray = (await runtime.scheduler.submit(items)).rows
    return rows


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.mark.parametrize(
    "case", ["qwen3", "qwen2-pooled", "mistral", "llama", "qwen2-bidirectional"]
)
@pytest.mark.parametrize("prompt_name", [None, "query", "terse"])
async def test_vectors_match_sentence_transformers(
    embedders: dict[str, tuple[Path, Path]], case: str, prompt_name: str | None
) -> None:
    st = pytest.importorskip("sentence_transformers", reason="the reference (test extra)")
    hf, exported = embedders[case]
    model = st.SentenceTransformer(str(hf), device="cpu")
    expected = model.encode(TEXTS, prompt_name=prompt_name, normalize_embeddings=True)
    manifest = ModelFiles.resolve(exported).manifest
    assert manifest is not None and manifest.prompts == PROMPTS
    prompt = manifest.prompts[prompt_name] if prompt_name else ""
    async for runtime in started(exported):
        got = await vectors(runtime, TEXTS, prompt)
        # The very ids sentence-transformers feeds (prompt joined to the text, EOS last).
        ours = encode_prompted(runtime.tokenizer, TEXTS, prompt, truncate=True)
        features = model.preprocess([prompt + t for t in TEXTS])
        for i, item in enumerate(ours):
            keep = np.asarray(features["attention_mask"][i]).astype(bool)
            assert list(np.asarray(features["input_ids"][i])[keep]) == list(item.ids)
    cos = cosine(got, expected)
    print(f"{case} prompt={prompt_name}: least cosine to sentence-transformers {cos.min():.7f}")
    assert cos.min() >= 0.999, cos


async def test_bidirectional_attention_is_exported_as_the_config_says(
    embedders: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """is_causal false in config.json exports bidirectional attention (the manifest says
    so); the same weights read causally give other vectors, so the mask is not a no-op."""
    hf, exported = embedders["qwen2-bidirectional"]
    manifest = ModelFiles.resolve(exported).manifest
    assert manifest is not None and manifest.attention == "bidirectional"
    causal = tmp_path / "causal"
    assert export_folder(hf, causal, mask="causal").attention == "causal"
    async for runtime in started(exported):
        both = await vectors(runtime, TEXTS)
    async for runtime in started(causal):
        one_way = await vectors(runtime, TEXTS)
    assert cosine(both, one_way).max() < 0.99


@pytest.mark.parametrize("case", ["qwen3", "qwen2-pooled", "qwen2-bidirectional"])
async def test_a_vector_is_the_same_alone_and_in_any_batch_and_bucket(
    embedders: dict[str, tuple[Path, Path]], case: str
) -> None:
    """Each text alone in the fine default grid, all together in one request, and all
    padded to the longest bucket (1024 tokens) beside the longest texts."""
    _, exported = embedders[case]
    async for runtime in started(exported):
        alone = np.stack([(await vectors(runtime, [t]))[0] for t in TEXTS])
        together = await vectors(runtime, TEXTS)
    async for runtime in started(exported, lengths=[64, 1024]):
        padded = await vectors(runtime, [*TEXTS, TEXTS[3] * 4])
        assert max(b.length for b in runtime.scheduler.stats.batches) == 1024
    for other in (together, padded[: len(TEXTS)]):
        assert np.abs(other - alone).max() <= 1e-4
        assert cosine(other, alone).min() >= 0.99999


def left_and_right_padded(rows: Sequence[Sequence[int]], width: int) -> tuple[dict, dict]:
    feeds = []
    for side in ("left", "right"):
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, span] = row
            mask[i, span] = 1
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds[0], feeds[1]


@pytest.mark.parametrize("case", ["qwen3", "qwen2-pooled"])
async def test_last_token_pooling_under_left_and_right_padding(
    embedders: dict[str, tuple[Path, Path]], case: str
) -> None:
    """The graph on ONNX Runtime directly, fed as Qwen3-Embedding's tokenizer pads (left)
    and as the server does (right): the server's reducer (or the graph's own gather)
    gives each text the vector it has when run unpadded."""
    _, exported = embedders[case]
    files = ModelFiles.resolve(exported)
    manifest = files.manifest
    assert manifest is not None
    async for runtime in started(exported):
        items = runtime.tokenizer.encode(TEXTS, truncate=True)
    session = ort.InferenceSession(str(files.onnx), providers=["CPUExecutionProvider"])
    pool = heads.make_reducer(manifest.pooling)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = session.run([manifest.output], feeds)
        rows: np.ndarray = pool(out, feeds["attention_mask"])
        return rows

    alone = np.concatenate([run(left_and_right_padded([it.ids], len(it.ids))[1]) for it in items])
    left, right = left_and_right_padded([it.ids for it in items], max(len(i) for i in items) + 5)
    for padded in (run(left), run(right)):
        assert np.abs(padded - alone).max() <= 1e-4


async def test_prompt_tokens_count_and_truncation_keeps_the_prompt(
    embedders: dict[str, tuple[Path, Path]],
) -> None:
    hf, exported = embedders["qwen3"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    prompt = PROMPTS["query"]
    async for runtime in started(exported, max_length=80):
        tok = runtime.tokenizer
        items = encode_prompted(tok, TEXTS[:2], prompt, truncate=True)
        # Every token of prompt + text counts, as transformers tokenises the joined string.
        for item, text in zip(items, TEXTS[:2], strict=True):
            assert list(item.ids) == hf_tok(prompt + text)["input_ids"]
        result = await runtime.scheduler.submit(items)
        assert result.tokens == sum(len(hf_tok(prompt + t)["input_ids"]) for t in TEXTS[:2])
        assert prompt_length(tok, prompt) == len(hf_tok(prompt)["input_ids"])
        eos = hf_tok.convert_tokens_to_ids("<|endoftext|>")
        whole = hf_tok(prompt + TEXTS[3])["input_ids"]
        n_prompt = len(hf_tok(prompt, add_special_tokens=False)["input_ids"]) - 1
        for direction in ("right", "left"):
            (cut,) = encode_prompted(tok, [TEXTS[3]], prompt, truncate=True, direction=direction)
            assert len(cut.ids) <= 80 and cut.ids[-1] == eos
            assert list(cut.ids[:n_prompt]) == whole[:n_prompt]  # the prompt is whole
        (right,) = encode_prompted(tok, [TEXTS[3]], prompt, truncate=True)
        assert list(right.ids) == [*whole[:79], eos]  # as the tokenizer's own truncation
        (left,) = encode_prompted(tok, [TEXTS[3]], prompt, truncate=True, direction="left")
        assert hf_tok.decode(left.ids).endswith("at the same time. <|endoftext|>")
        with pytest.raises(InputTooLong):
            encode_prompted(tok, [TEXTS[3]], prompt, truncate=False)
        with pytest.raises(PromptTooLong, match="leaving no room"):
            encode_prompted(tok, ["x"], prompt * 3, truncate=True)


async def test_transformers_tokenisation_is_served_when_the_file_differs(
    tmp_path: Path,
) -> None:
    """A Qwen2 folder whose tokenizer.json has GPT-2's pipeline (no normaliser, GPT-2's
    split pattern) while transformers' Qwen2Tokenizer rebuilds Qwen's (NFC, its own
    pattern): the export serves what transformers (and sentence-transformers) tokenise."""
    hf = write_decoder_embedder(tmp_path / "hf", "qwen2", file_pre_tokenizer="gpt2")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    # NFC composes the decomposed é; Qwen's pattern keeps "(" with the word after it.
    text = "Cafe\u0301 (hello)world, 12 cafés"
    from tokenizers import Tokenizer

    file_ids = Tokenizer.from_file(str(hf / "tokenizer.json")).encode(text).ids
    assert file_ids != hf_tok(text)["input_ids"]
    export_folder(hf, tmp_path / "out")
    served = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert served.encode(text).ids == hf_tok(text)["input_ids"]


def test_a_custom_code_decoder_must_say_how_it_attends(tmp_path: Path) -> None:
    from trt_async.tools.export import ExportError

    hf = write_decoder_embedder(tmp_path / "hf", "qwen2", sentence_transformers=False)
    config = json.loads((hf / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_qwen.Qwen2Model"}
    config.pop("is_causal", None)
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="pass --mask bidirectional or --mask causal"):
        export_folder(hf, tmp_path / "out")
    assert export_folder(hf, tmp_path / "out", mask="bidirectional").attention == "bidirectional"
    # Without sentence-transformers' files a decoder pools its last token.
    assert ModelFiles.resolve(tmp_path / "out").manifest.pooling == "last"  # type: ignore[union-attr]


# -- LLM rerankers ---------------------------------------------------------------------------

RERANKERS: dict[str, Family] = {
    "qwen3-reranker": "qwen3",
    "bge-reranker-v2-gemma": "gemma",
    "mxbai-rerank-v2": "qwen2",
}


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("llm-rerankers")
    out = {}
    for template, family in RERANKERS.items():
        hf = write_llm_reranker(root / f"{template}-hf", family, seed=3)
        export_folder(hf, root / template, task="rerank", template=template)
        out[template] = (hf, root / template)
    return out


@pytest.mark.parametrize("template", list(RERANKERS))
@pytest.mark.parametrize("instruction", [None, "Judge whether the passage names a city"])
async def test_rerank_scores_match_the_torch_reference(
    rerankers: dict[str, tuple[Path, Path]], template: str, instruction: str | None
) -> None:
    hf, exported = rerankers[template]
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    expected_ids = [reference_ids(template, tok, QUERY, d, instruction) for d in DOCUMENTS]
    raw, prob = reference_scores(template, hf, expected_ids)
    manifest = ModelFiles.resolve(exported).manifest
    assert manifest is not None and manifest.pair_template is not None
    assert (
        manifest.score is not None
        and manifest.score.tokens
        == {
            "qwen3-reranker": ["no", "yes"],
            "bge-reranker-v2-gemma": ["Yes"],
            "mxbai-rerank-v2": ["0", "1"],
        }[template]
    )
    async for runtime in started(exported):
        items = encode_llm_pairs(
            runtime.tokenizer,
            manifest.pair_template,
            QUERY,
            DOCUMENTS,
            instruction=instruction,
            truncate=True,
        )
        assert [list(i.ids) for i in items] == expected_ids
        rows = (await runtime.scheduler.submit(items)).rows
        alone = np.concatenate([(await runtime.scheduler.submit([i])).rows for i in items])
    assert rows.shape == (len(DOCUMENTS), 1)
    got_raw = rows[:, 0].astype(np.float64)
    got_prob = heads.sigmoid(got_raw)
    raw_diff, prob_diff = np.abs(got_raw - raw).max(), np.abs(got_prob - prob).max()
    print(
        f"{template} instruction={instruction is not None}: max |raw - torch| {raw_diff:.2e}, "
        f"max |score - torch| {prob_diff:.2e}"
    )
    assert raw_diff <= 1e-4 and prob_diff <= 1e-4
    assert np.abs(alone - rows).max() <= 1e-5  # the same pair alone and in the batch
    assert np.ptp(got_prob) > 0.05  # the documents are told apart: nothing is constant


async def test_a_reranker_graph_gives_only_the_score_tokens_logits(
    rerankers: dict[str, tuple[Path, Path]],
) -> None:
    """(batch, 2) or (batch, 1) logits, and no vocabulary-wide matrix but the input
    embedding (the untied Qwen2 and the tied Qwen3 and Gemma alike)."""
    import onnx

    for template, (_, exported) in rerankers.items():
        files = ModelFiles.resolve(exported)
        session = ort.InferenceSession(str(files.onnx), providers=["CPUExecutionProvider"])
        (out,) = session.get_outputs()
        width = 1 if template == "bge-reranker-v2-gemma" else 2
        feeds = {
            "input_ids": np.ones((3, 7), np.int64),
            "attention_mask": np.ones((3, 7), np.int64),
        }
        assert out.name == "logits" and session.run(None, feeds)[0].shape == (3, width)
        vocab_size = json.loads((exported / "config.json").read_text())["vocab_size"]
        graph = onnx.load(str(files.onnx)).graph
        wide = [t.name for t in graph.initializer if vocab_size in t.dims]
        assert len(wide) == 1, wide


async def test_long_documents_are_cut_and_the_template_kept(
    rerankers: dict[str, tuple[Path, Path]],
) -> None:
    _, exported = rerankers["qwen3-reranker"]
    manifest = ModelFiles.resolve(exported).manifest
    assert manifest is not None and manifest.pair_template is not None
    async for runtime in started(exported, max_length=200):
        tok = runtime.tokenizer
        long_doc = DOCUMENTS[3] * 5
        (cut,) = encode_llm_pairs(
            tok, manifest.pair_template, QUERY, [long_doc], instruction=None, truncate=True
        )
        texts = pair_texts(
            manifest.pair_template, QUERY, instruction_for(manifest.pair_template, None)
        )

        rust = tok.untruncated
        head = [*rust.encode(texts.before[0], add_special_tokens=False).ids]
        head += rust.encode(texts.query, add_special_tokens=False).ids
        tail = list(rust.encode(texts.after[0], add_special_tokens=False).ids)
        document = list(rust.encode(texts.document(long_doc), add_special_tokens=False).ids)
        assert len(head) + len(document) + len(tail) > 200
        assert list(cut.ids) == head + document[: 200 - len(head) - len(tail)] + tail
        with pytest.raises(InputTooLong):
            encode_llm_pairs(
                tok, manifest.pair_template, QUERY, [long_doc], instruction=None, truncate=False
            )
        with pytest.raises(PromptTooLong, match="instruction with the model's template"):
            encode_llm_pairs(
                tok,
                manifest.pair_template,
                QUERY,
                ["d"],
                instruction="a very long instruction " * 40,
                truncate=True,
            )
        scores = (await runtime.scheduler.submit([cut])).rows
        assert np.isfinite(scores).all()
