"""Decoder embedders and LLM rerankers served end to end over HTTP, by every route.

The app runs in-process (as in tests/test_http_api.py) over tiny randomly initialised
models built with transformers (tests/decoder_models.py) and exported with
``trt-async export``. The references are independent of the server: sentence-transformers'
own ``encode`` (with ``prompt_name`` or ``prompt``) for the embedders, and for the LLM
rerankers each model card's input building run through the whole causal LM in torch, one
pair at a time.

Served: ``qwen3-embed`` and ``mistral-embed`` (the sentence-transformers prompts of
:data:`~tests.decoder_models.PROMPTS`, no default), ``qwen3-embed-default`` (the same folder
with ``default_prompt_name: query`` and a prompt of the config's own), ``qwen3-embed-96``
and ``qwen3-embed-48`` (``max_length`` 96 and 48), the three LLM reranker templates,
``qwen3-reranker-instructed`` (an instruction in its config) and all-MiniLM-L6-v2 (no
prompts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.decoder_models import (
    PROMPTS,
    Family,
    reference_ids,
    reference_scores,
    write_decoder_embedder,
    write_llm_reranker,
)
from tests.http_fixtures import BASE_URL, assert_error
from trt_async.app import create_app
from trt_async.core.config import Config, ModelConfig

pytest_plugins = ["tests.http_fixtures"]
pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch", reason="exporting needs the export extra")
transformers = pytest.importorskip("transformers", reason="exporting needs the export extra")
st = pytest.importorskip("sentence_transformers", reason="the reference (test extra)")

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "機器學習的理論很重要",
    "Graphics cards run thousands of small programs at the same time. " * 8,
    "short",
]
RAW_PROMPT = "Represent this sentence for searching relevant passages: "
CONFIG_PROMPT = "Summarise: "
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "The cat is sleeping on the warm windowsill.",
    "巴黎是法國的首都，也是人口最多的城市。",
    "The river flows slowly through the old town. " * 10,
]
INSTRUCTION = "Judge whether the passage names a city"
CONFIGURED_INSTRUCTION = "Judge whether the passage is about animals"
EMBEDDERS: dict[str, Family] = {"qwen3-embed": "qwen3", "mistral-embed": "mistral"}
RERANKERS: dict[str, Family] = {
    "qwen3-reranker": "qwen3",
    "bge-reranker-v2-gemma": "gemma",
    "mxbai-rerank-v2": "qwen2",
}
MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(Hugging Face folder, exported folder) per served family and template."""
    from trt_async.tools.export import export_model

    root = tmp_path_factory.mktemp("decoder-http")
    out: dict[str, tuple[Path, Path]] = {}
    for seed, (name, family) in enumerate(EMBEDDERS.items()):
        hf = write_decoder_embedder(root / f"{name}-hf", family, seed=seed)
        export_model(hf, "embed", root / name, progress=False)
        out[name] = (hf, root / name)
    for template, family in RERANKERS.items():
        hf = write_llm_reranker(root / f"{template}-hf", family, seed=3)
        export_model(hf, "rerank", root / template, progress=False, template=template)
        out[template] = (hf, root / template)
    return out


def decoder_config(folders: dict[str, tuple[Path, Path]], minilm: Path) -> Config:
    qwen3 = str(folders["qwen3-embed"][1])
    embedders = {name: ModelConfig(model_path=str(folders[name][1])) for name in EMBEDDERS}
    embedders["qwen3-embed-default"] = ModelConfig(
        model_path=qwen3, default_prompt_name="query", prompts={"summary": CONFIG_PROMPT}
    )
    # The query prompt alone is 49 tokens of the tiny tokenizer.
    embedders["qwen3-embed-48"] = ModelConfig(model_path=qwen3, max_length=48)
    embedders["qwen3-embed-96"] = ModelConfig(model_path=qwen3, max_length=96)
    embedders[MINILM] = ModelConfig(model_path=str(minilm))
    rerankers = {name: ModelConfig(model_path=str(folders[name][1])) for name in RERANKERS}
    rerankers["qwen3-reranker-instructed"] = ModelConfig(
        model_path=str(folders["qwen3-reranker"][1]), instruction=CONFIGURED_INSTRUCTION
    )
    config = Config(embedding_models=embedders, reranking_models=rerankers)
    config.server.max_client_batch_size = 64
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    folders: dict[str, tuple[Path, Path]], minilm_model_dir: Path
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(decoder_config(folders, minilm_model_dir))
    async with AsyncTestClient(app, base_url=BASE_URL, timeout=120) as c:
        yield c


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


_st_models: dict[str, Any] = {}


def st_encode(hf: Path, texts: Sequence[str], max_length: int | None = None, **kw: Any) -> Any:
    """sentence-transformers' own vectors (its prompts by name, or a prompt's text)."""
    key = f"{hf}:{max_length}"
    if key not in _st_models:
        _st_models[key] = st.SentenceTransformer(str(hf), device="cpu")
        if max_length is not None:
            _st_models[key].max_seq_length = max_length
    return _st_models[key].encode(list(texts), normalize_embeddings=True, **kw)


def st_tokens(hf: Path, texts: Sequence[str], prompt: str = "") -> int:
    """Tokens transformers' tokenizer makes of ``prompt + text`` (what usage must count)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    return sum(len(tok(prompt + t)["input_ids"]) for t in texts)


# -- embedders ---------------------------------------------------------------------------------

#: (case, request fields, sentence-transformers' arguments)
PROMPT_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("no prompt", {}, {}),
    ("prompt_name=query", {"prompt_name": "query"}, {"prompt_name": "query"}),
    ("prompt_name=terse", {"prompt_name": "terse"}, {"prompt_name": "terse"}),
    ("prompt (text)", {"prompt": RAW_PROMPT}, {"prompt": RAW_PROMPT}),
]


async def embed_by_route(client: Any, model: str, fields: dict[str, Any]) -> dict[str, np.ndarray]:
    """The vectors of :data:`TEXTS` from each embedding route, with the prompt ``fields``."""
    out: dict[str, np.ndarray] = {}
    openai = await client.post(
        "/v1/embeddings",
        json={"model": model, "input": TEXTS, "encoding_format": "float", **fields},
    )
    assert openai.status_code == 200, openai.text
    out["/v1/embeddings"] = np.array([d["embedding"] for d in openai.json()["data"]])
    tei = await client.post("/embed", json={"model": model, "inputs": TEXTS, **fields})
    assert tei.status_code == 200, tei.text
    out["/embed"] = np.array(tei.json())
    root = await client.post(f"/?model={model}", json={"inputs": TEXTS, **fields})
    assert root.status_code == 200, root.text
    out["/ (TEI root)"] = np.array(root.json())
    seed = await client.post(f"/infer/{model}", json={"documents": TEXTS, **fields})
    assert seed.status_code == 200, seed.text
    out["/infer/{model}"] = np.array(seed.json()["embeddings"])
    every = await client.post("/embed_all", json={"model": model, "inputs": TEXTS[:1], **fields})
    assert every.status_code == 200, every.text
    # The last token's vector is the pooled one before normalisation (last-token pooling).
    out["/embed_all (last token)"] = np.array([every.json()[0][-1]])
    return out


@pytest.mark.parametrize("model", list(EMBEDDERS))
@pytest.mark.parametrize(
    ("case", "fields", "reference"), PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES]
)
async def test_every_embedding_route_matches_sentence_transformers(
    client: Any,
    folders: dict[str, tuple[Path, Path]],
    model: str,
    case: str,
    fields: dict[str, Any],
    reference: dict[str, Any],
) -> None:
    hf = folders[model][0]
    expected = st_encode(hf, TEXTS, **reference)
    for route, got in (await embed_by_route(client, model, fields)).items():
        cos = cosine(got, expected[: len(got)])
        print(f"{model} {case} {route}: least cosine to sentence-transformers {cos.min():.7f}")
        assert cos.min() >= 0.999, (route, cos)
    if fields:  # the prompt changes the vectors: it was not dropped on the way
        plain = st_encode(hf, TEXTS)
        assert cosine(plain, expected).min() < 0.99


async def test_cohere_input_type_picks_the_models_prompt(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    hf = folders["qwen3-embed"][0]
    cases = {
        "search_query": {"prompt_name": "query"},
        "search_document": {"prompt_name": "document"},  # "" for Qwen3-Embedding
        "clustering": {},  # the model has no such prompt: the texts go as sent
    }
    for input_type, reference in cases.items():
        expected = st_encode(hf, TEXTS, **reference)
        for path in ("/v2/embed", "/v1/embed"):
            body = {
                "model": "qwen3-embed",
                "texts": TEXTS,
                "input_type": input_type,
                "embedding_types": ["float"],
            }
            r = await client.post(path, json=body)
            assert r.status_code == 200, r.text
            got = np.array(r.json()["embeddings"]["float"])
            cos = cosine(got, expected)
            print(f"cohere {path} input_type={input_type}: least cosine {cos.min():.7f}")
            assert cos.min() >= 0.999, (path, input_type, cos)
            tokens = r.json()["meta"]["billed_units"]["input_tokens"]
            prompt = PROMPTS.get(reference.get("prompt_name", ""), "")
            assert tokens == st_tokens(hf, TEXTS, prompt)


async def test_a_configured_default_prompt_and_config_prompts(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    """``default_prompt_name: query`` in the config: a request naming none gets it (as
    sentence-transformers' default does), one naming another gets that; the config's own
    prompt is served beside the model's."""
    hf = folders["qwen3-embed"][0]
    model = "qwen3-embed-default"
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {"prompt_name": "query"}),
        ({"prompt_name": "document"}, {"prompt_name": "document"}),
        ({"prompt_name": "summary"}, {"prompt": CONFIG_PROMPT}),
    ]
    for fields, reference in cases:
        expected = st_encode(hf, TEXTS, **reference)
        for route, got in (await embed_by_route(client, model, fields)).items():
            assert cosine(got, expected[: len(got)]).min() >= 0.999, (fields, route)
    # Reranking by cosine embeds the query with its query prompt, documents with theirs.
    r = await client.post(
        "/v1/rerank", json={"model": "qwen3-embed", "query": QUERY, "documents": DOCUMENTS}
    )
    assert r.status_code == 200, r.text
    query = st_encode(hf, [QUERY], prompt_name="query")[0]
    documents = st_encode(hf, DOCUMENTS, prompt_name="document")
    scores = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert np.allclose([scores[i] for i in range(len(DOCUMENTS))], documents @ query, atol=1e-4)
    # TEI's sentence similarity embeds both sides as /embed does without a prompt name.
    body = {"inputs": {"source_sentence": QUERY, "sentences": DOCUMENTS}, "model": model}
    similar = await client.post("/", json=body)
    assert similar.status_code == 200, similar.text
    both = st_encode(hf, [QUERY, *DOCUMENTS], prompt_name="query")
    assert np.allclose(similar.json(), both[1:] @ both[0], atol=1e-4)


async def test_usage_counts_the_prompts_tokens(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    hf = folders["qwen3-embed"][0]
    for fields, prompt in (
        ({}, ""),
        ({"prompt_name": "query"}, PROMPTS["query"]),
        ({"prompt": RAW_PROMPT}, RAW_PROMPT),
    ):
        body = {"model": "qwen3-embed", "input": TEXTS, **fields}
        r = await client.post("/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        expected = st_tokens(hf, TEXTS, prompt)
        assert r.json()["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
        tei = await client.post("/embed", json={"model": "qwen3-embed", "inputs": TEXTS, **fields})
        assert int(tei.headers["x-compute-tokens"]) == expected


async def test_truncation_keeps_the_prompt_and_cuts_the_text(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    """At 96 tokens the long text is cut and the 49-token query prompt kept, as
    sentence-transformers (whose tokenizer cuts prompt + text from the end) does."""
    hf = folders["qwen3-embed"][0]
    texts = [TEXTS[3], TEXTS[1]]
    lengths = [st_tokens(hf, [t], PROMPTS["query"]) for t in texts]
    assert lengths[0] > 96 >= lengths[1]
    body = {"model": "qwen3-embed-96", "input": texts, "prompt_name": "query"}
    r = await client.post("/v1/embeddings", json={**body, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    expected = st_encode(hf, texts, max_length=96, prompt_name="query")
    assert cosine(got, expected).min() >= 0.999
    assert r.json()["usage"]["prompt_tokens"] == 96 + lengths[1]
    refused = await client.post("/v1/embeddings", json={**body, "truncate": False})
    message = assert_error(refused, 422, "openai")["message"]
    assert f"must have less than 97 tokens. Given: {lengths[0]}" in message


# -- LLM rerankers -----------------------------------------------------------------------------

_references: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray]] = {}


def torch_scores(
    folders: dict[str, tuple[Path, Path]], template: str, instruction: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """(raw score, probability) per document from the torch reference of the template."""
    key = (template, instruction)
    if key not in _references:
        hf = folders[template][0]
        tok = transformers.AutoTokenizer.from_pretrained(str(hf))
        rows = [reference_ids(template, tok, QUERY, d, instruction) for d in DOCUMENTS]
        _references[key] = reference_scores(template, hf, rows)
    return _references[key]


async def rerank_by_route(
    client: Any, model: str, instruction: str | None
) -> dict[str, tuple[np.ndarray, bool]]:
    """Scores in document order from each rerank route, and whether they are raw."""
    extra = {} if instruction is None else {"instruction": instruction}
    cohere = {"model": model, "query": QUERY, "documents": DOCUMENTS, **extra}
    out: dict[str, tuple[np.ndarray, bool]] = {}

    def by_index(results: list[dict[str, Any]], key: str) -> np.ndarray:
        found = {x["index"]: x[key] for x in results}
        return np.array([found[i] for i in range(len(DOCUMENTS))])

    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        r = await client.post(path, json=cohere)
        assert r.status_code == 200, r.text
        out[path] = (by_index(r.json()["results"], "relevance_score"), False)
    voyage = await client.post("/v1/rerank", json={**cohere, "top_k": None, "truncation": True})
    assert voyage.status_code == 200, voyage.text
    out["/v1/rerank (Voyage)"] = (by_index(voyage.json()["data"], "relevance_score"), False)
    tei = {"model": model, "query": QUERY, "texts": DOCUMENTS, **extra}
    for path in ("/rerank", "/"):
        r = await client.post(path, json=tei)
        assert r.status_code == 200, r.text
        out[f"{path} (TEI texts)"] = (by_index(r.json(), "score"), False)
    raw = await client.post("/rerank", json={**tei, "raw_scores": True})
    out["/rerank (TEI raw_scores)"] = (by_index(raw.json(), "score"), True)
    seed = await client.post(
        f"/infer/{model}", json={"query": QUERY, "documents": DOCUMENTS, **extra}
    )
    assert seed.status_code == 200, seed.text
    out["/infer/{model}"] = (np.array(seed.json()["scores"]), True)
    openai = await client.post(
        "/v1/embeddings",
        json={
            "model": model,
            "query": QUERY,
            "input": DOCUMENTS,
            "encoding_format": "float",
            **extra,
        },
    )
    assert openai.status_code == 200, openai.text
    out["/v1/embeddings (query)"] = (
        np.array([d["embedding"][0] for d in openai.json()["data"]]),
        True,
    )
    return out


@pytest.mark.parametrize("template", list(RERANKERS))
@pytest.mark.parametrize("instruction", [None, INSTRUCTION], ids=["default", "instruction"])
async def test_every_rerank_route_matches_the_torch_reference(
    client: Any, folders: dict[str, tuple[Path, Path]], template: str, instruction: str | None
) -> None:
    raw, prob = torch_scores(folders, template, instruction)
    for route, (got, is_raw) in (await rerank_by_route(client, template, instruction)).items():
        diff = np.abs(got - (raw if is_raw else prob)).max()
        print(f"{template} instruction={instruction is not None} {route}: max diff {diff:.2e}")
        assert diff <= 1e-4, (route, got, raw if is_raw else prob)
    assert np.ptp(prob) > 0.05  # the documents are told apart
    if instruction is not None:  # the instruction reached the model
        assert np.abs(torch_scores(folders, template, None)[1] - prob).max() > 1e-3


async def test_a_configured_instruction_and_the_requests_over_it(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    model = "qwen3-reranker-instructed"
    _, configured = torch_scores(folders, "qwen3-reranker", CONFIGURED_INSTRUCTION)
    _, asked = torch_scores(folders, "qwen3-reranker", INSTRUCTION)
    for instruction, expected in ((None, configured), (INSTRUCTION, asked)):
        scores = await rerank_by_route(client, model, instruction)
        got, _ = scores["/v2/rerank"]
        assert np.abs(got - expected).max() <= 1e-4


async def test_rerank_usage_counts_the_template(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    hf = folders["qwen3-reranker"][0]
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    expected = sum(
        len(reference_ids("qwen3-reranker", tok, QUERY, d, INSTRUCTION)) for d in DOCUMENTS
    )
    body = {"model": "qwen3-reranker", "query": QUERY, "documents": DOCUMENTS}
    r = await client.post("/v1/rerank", json={**body, "instruction": INSTRUCTION})
    assert r.json()["usage"]["total_tokens"] == expected


# -- what the server says about these models ---------------------------------------------------


async def test_info_reports_last_token_pooling_and_the_prompts(client: Any) -> None:
    info = (await client.get("/info?model=qwen3-embed")).json()
    assert info["model_type"] == {"embedding": {"pooling": "last_token"}}
    assert info["prompt_names"] == sorted(PROMPTS) and info["default_prompt_name"] is None
    default = (await client.get("/info?model=qwen3-embed-default")).json()
    assert default["prompt_names"] == sorted([*PROMPTS, "summary"])
    assert default["default_prompt_name"] == "query"
    reranker = (await client.get("/info?model=qwen3-reranker")).json()
    assert "reranker" in reranker["model_type"]
    assert reranker["pair_template"] == "qwen3-reranker" and reranker["prompt_names"] is None
    minilm = (await client.get(f"/info?model={MINILM}")).json()
    assert minilm["model_type"] == {"embedding": {"pooling": "mean"}}


# -- bad input ---------------------------------------------------------------------------------

#: (what, path, body, status, dialect, words the message must hold, param)
BAD_INPUTS: list[tuple[str, str, dict[str, Any], int, str, str, str | None]] = [
    (
        "unknown prompt_name (OpenAI)",
        "/v1/embeddings",
        {"model": "qwen3-embed", "input": "x", "prompt_name": "passage"},
        422,
        "openai",
        "prompt_name 'passage' is not one of this model's prompts: document, query, terse",
        "prompt_name",
    ),
    (
        "unknown prompt_name (TEI)",
        "/embed",
        {"model": "qwen3-embed", "inputs": "x", "prompt_name": "passage"},
        422,
        "tei",
        "is not one of this model's prompts: document, query, terse",
        None,
    ),
    (
        "prompt_name on a model without prompts",
        "/embed",
        {"model": MINILM, "inputs": "x", "prompt_name": "query"},
        422,
        "tei",
        f"model '{MINILM}' has no prompts, so it takes no prompt_name",
        None,
    ),
    (
        "a prompt's text on a model without prompts",
        "/v1/embeddings",
        {"model": MINILM, "input": "x", "prompt": "query: "},
        422,
        "openai",
        f"model '{MINILM}' has no prompts, so it takes no prompt",
        "prompt",
    ),
    (
        "prompt_name and prompt together",
        "/infer/qwen3-embed",
        {"documents": ["x"], "prompt_name": "query", "prompt": "q: "},
        422,
        "detail",
        "send either prompt_name or a prompt's text, not both",
        None,
    ),
    (
        "a prompt longer than the model takes",
        "/v1/embeddings",
        {"model": "qwen3-embed-96", "input": "x", "prompt": "query words " * 100},
        422,
        "openai",
        "prompt (the prompt's text) takes",
        "prompt",
    ),
    (
        "a named prompt longer than the model takes",
        "/embed",
        {"model": "qwen3-embed-48", "inputs": "x", "prompt_name": "query"},
        422,
        "tei",
        "the prompt named by prompt_name takes 49 tokens, leaving no room for the text in "
        "this model's 48",
        None,
    ),
    (
        "token ids with a prompt",
        "/v1/embeddings",
        {"model": "qwen3-embed", "input": [[5, 6, 7]], "prompt_name": "query"},
        422,
        "openai",
        "prompt_name cannot go before token ids",
        "prompt_name",
    ),
    (
        "an instruction for a model without a template",
        "/v1/rerank",
        {"model": "qwen3-embed", "query": "q", "documents": ["d"], "instruction": "i"},
        422,
        "rerank",
        "model 'qwen3-embed' takes no instruction (only LLM rerankers exported with a template",
        "instruction",
    ),
    (
        "an instruction for an embedder (TEI texts)",
        "/rerank",
        {"model": MINILM, "query": "q", "texts": ["d"], "instruction": "i"},
        422,
        "tei",
        "takes no instruction",
        None,
    ),
    (
        "an instruction longer than the budget",
        "/v2/rerank",
        {
            "model": "qwen3-reranker",
            "query": "q",
            "documents": ["d"],
            "instruction": "judge the passage " * 400,
        },
        422,
        "rerank",
        "instruction with the model's template takes",
        "instruction",
    ),
    (
        "an instruction on an embedding request",
        "/v1/embeddings",
        {"model": "qwen3-embed", "input": "x", "instruction": "i"},
        422,
        "openai",
        "instruction is not taken when embedding",
        "instruction",
    ),
    (
        "a prompt on a rerank request (seed)",
        "/infer/qwen3-reranker",
        {"query": "q", "documents": ["d"], "prompt_name": "query"},
        422,
        "detail",
        "prompt_name is not taken when reranking",
        None,
    ),
    (
        "a prompt on the OpenAI rerank form",
        "/v1/embeddings",
        {"model": "qwen3-reranker", "query": "q", "input": ["d"], "prompt": "p"},
        422,
        "openai",
        "prompt is not taken when reranking",
        "prompt",
    ),
    (
        "classify with an LLM reranker (TEI)",
        "/predict",
        {"model": "qwen3-reranker", "inputs": "a text"},
        400,
        "tei",
        "it is an LLM reranker (template qwen3-reranker) and only scores",
        None,
    ),
    (
        "classify with an LLM reranker (TEI root)",
        "/?model=bge-reranker-v2-gemma",
        {"inputs": ["a premise", "a hypothesis"]},
        400,
        "tei",
        "use a rerank route",
        None,
    ),
    (
        "zero-shot with an LLM reranker",
        "/v1/zero-shot",
        {"model": "mxbai-rerank-v2", "text": "t", "candidate_labels": ["a", "b"]},
        400,
        "openai",
        "it is an LLM reranker (template mxbai-rerank-v2)",
        "model",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "dialect", "words", "param"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
async def test_bad_input_is_refused_with_what_to_fix(
    client: Any,
    path: str,
    body: dict[str, Any],
    status: int,
    dialect: str,
    words: str,
    param: str | None,
) -> None:
    error = assert_error(await client.post(path, json=body), status, dialect)
    message = (
        error["message"]
        if dialect in ("openai", "rerank")
        else error.get("error") or error["detail"]
    )
    assert words in message, message
    if param is not None:
        assert error["param"] == param, error


async def test_tokenize_shows_what_the_model_reads(
    client: Any, folders: dict[str, tuple[Path, Path]]
) -> None:
    hf = folders["qwen3-embed"][0]
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    for model, fields, prompt in (
        ("qwen3-embed", {"prompt_name": "query"}, PROMPTS["query"]),
        ("qwen3-embed", {}, ""),
        ("qwen3-embed-default", {}, PROMPTS["query"]),  # its default, as /embed puts it
    ):
        r = await client.post("/tokenize", json={"model": model, "inputs": TEXTS[:2], **fields})
        assert r.status_code == 200, r.text
        ids = [[t["id"] for t in row] for row in r.json()]
        assert ids == [tok(prompt + t)["input_ids"] for t in TEXTS[:2]]
    refused = await client.post(
        "/tokenize", json={"model": MINILM, "inputs": "x", "prompt_name": "query"}
    )
    assert "has no prompts" in assert_error(refused, 422, "tei")["error"]


# -- the API docs ------------------------------------------------------------------------------


def test_the_api_docs_show_prompt_names_and_an_instruction(
    folders: dict[str, tuple[Path, Path]], minilm_model_dir: Path
) -> None:
    import msgspec
    from litestar.testing import TestClient

    from trt_async.http.openai_api import EmbeddingRequest
    from trt_async.http.rerank import RerankRequest
    from trt_async.http.tei import EmbedRequest

    # Outside a ``with`` block the test client does not run the lifespan: nothing loads.
    app = create_app(decoder_config(folders, minilm_model_dir))
    spec = TestClient(app, base_url=BASE_URL).get("/docs/openapi.json").json()

    def examples(path: str) -> dict[str, Any]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return {name: e["value"] for name, e in body["examples"].items()}

    label = "embed with a prompt (prompt_name; this model's: document, query, terse)"
    for path, struct in (("/v1/embeddings", EmbeddingRequest), ("/embed", EmbedRequest)):
        example = examples(path)[label]
        assert example["prompt_name"] == "query" and example["model"] == "qwen3-embed"
        msgspec.convert(example, struct, strict=True)
    for path in ("/v1/rerank", "/v2/rerank"):
        example = examples(path)["rerank with an instruction (LLM reranker)"]
        assert example["model"] == "qwen3-reranker" and example["instruction"]
        msgspec.convert(example, RerankRequest, strict=True)
    fields = spec["components"]["schemas"]["EmbeddingRequest"]["properties"]
    assert "GET /info" in str(fields["prompt_name"])


# -- configs the model cannot take -------------------------------------------------------------


async def test_a_config_the_model_cannot_take_stops_its_load(
    folders: dict[str, tuple[Path, Path]],
) -> None:
    from trt_async.core.config import ConfigError, ModelKind
    from trt_async.core.registry import ModelRegistry

    embedder = str(folders["qwen3-embed"][1])
    reranker = str(folders["qwen3-reranker"][1])
    registry = ModelRegistry(Config(embedding_models={"good": ModelConfig(model_path=embedder)}))
    await registry.start()
    bad: list[tuple[ModelKind, ModelConfig, str]] = [
        (
            ModelKind.EMBEDDING,
            ModelConfig(model_path=embedder, default_prompt_name="passage"),
            "default_prompt_name 'passage' is not one of the model's prompts (document, "
            "query, terse)",
        ),
        (
            ModelKind.EMBEDDING,
            ModelConfig(model_path=embedder, instruction="Find cities"),
            "instruction is for LLM rerankers",
        ),
        (
            ModelKind.RERANKER,
            ModelConfig(model_path=reranker, prompts={"query": "q: "}),
            "prompts and default_prompt_name are for embedding models",
        ),
        (
            ModelKind.EMBEDDING,
            ModelConfig(model_path=embedder, default_prompt_name="query", max_length=40),
            "prompt 'query' takes 49 tokens, leaving no room for the text in max_length 40",
        ),
        (
            ModelKind.RERANKER,
            ModelConfig(model_path=reranker, instruction="Judge the passage " * 400),
            "the template with its instruction takes",
        ),
    ]
    try:
        for kind, config, words in bad:
            with pytest.raises(ConfigError, match="bad: ") as refused:
                await registry.load("bad", kind, config)
            assert words in str(refused.value)
        # The failed loads left nothing behind: no name, and only the good model's runtime.
        assert [m.name for m in registry] == ["good"]
        assert len(registry._runtimes) == 1
    finally:
        await registry.close()


# -- clients against a live server -------------------------------------------------------------


@pytest.mark.integration
def test_the_client_examples_run_against_a_live_server(
    folders: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """The client blocks of docs/decoders.md ("Clients"), as written, against
    ``trt-async serve`` serving the tiny Qwen3 embedder and reranker under the names the
    page uses; then the OpenAI SDK's ``extra_body`` prompt against sentence-transformers."""
    import os
    import re
    import subprocess
    import sys

    from tests.http_fixtures import REPO, serving

    page = (REPO / "docs" / "decoders.md").read_text(encoding="utf-8")
    section = page.split("## Clients", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(python|sh)\n(.*?)^```", section, re.M | re.S)
    assert len(blocks) >= 4, blocks
    config = tmp_path / "server.yaml"
    config.write_text(
        "embedding_models:\n"
        f"  qwen3-embedding:\n    model_path: {str(folders['qwen3-embed'][1])!r}\n"
        "reranking_models:\n"
        f"  qwen3-reranker:\n    model_path: {str(folders['qwen3-reranker'][1])!r}\n",
        encoding="utf-8",
    )
    openai = pytest.importorskip("openai")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CO_"))}
    with serving(config, tmp_path / "server.log") as url:
        for lang, code in blocks:
            code = code.replace("http://localhost:8887", url)
            if lang == "python":
                for module in re.findall(r"^\s*(?:from|import) ([\w.]+)", code, re.M):
                    pytest.importorskip(module.split(".")[0])
                command = [sys.executable, "-c", code]
            else:
                command = ["bash", "-e", "-o", "pipefail", "-c", code]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=120, env=env, check=False
            )
            assert done.returncode == 0, code + done.stdout + done.stderr
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        out = api.embeddings.create(
            model="qwen3-embedding", input=TEXTS, extra_body={"prompt_name": "query"}
        )
    got = np.array([d.embedding for d in out.data])
    hf = folders["qwen3-embed"][0]
    expected = st_encode(hf, TEXTS, prompt_name="query")
    assert cosine(got, expected).min() >= 0.999
    assert out.usage.prompt_tokens == st_tokens(hf, TEXTS, PROMPTS["query"])
