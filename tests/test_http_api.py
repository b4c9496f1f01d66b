"""Every dialect's success path through the real app, numbers checked against transformers.

The app runs in-process (Litestar's AsyncTestClient, an httpx.AsyncClient over ASGI); the
official ``openai`` SDK is pointed at it through that client.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.http_fixtures import (
    BASE_URL,
    COSINE_RERANKER,
    EMBEDDER,
    hf_embeddings,
    hf_logits,
    timing_headers_ok,
)
from tests.models import ExportedModel

pytest_plugins = ["tests.http_fixtures"]
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers", reason="references need the export extra")

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "機器學習的理論很重要",
    "A reranker scores how well a document answers a query.",
]
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The weather is lovely today.",
    "Paris is the capital and most populous city of France.",
    "France is a country in Europe.",
    "機器學習模型把句子轉成向量。",
]


def sdk(client: Any) -> Any:
    return openai.AsyncOpenAI(api_key="EMPTY", base_url=f"{BASE_URL}/v1", http_client=client)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


@pytest.fixture(scope="module")
def minilm_reference(minilm_hf_dir: Path) -> np.ndarray:
    return hf_embeddings(minilm_hf_dir, TEXTS)


@pytest.fixture(scope="module")
def minilm_token_counts(minilm_hf_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_hf_dir))
    return [len(ids) for ids in tok(TEXTS)["input_ids"]]


# -- OpenAI -----------------------------------------------------------------------------------


async def test_openai_sdk_base64_and_float_give_the_same_vectors(
    client: Any, minilm_reference: np.ndarray, minilm_token_counts: list[int]
) -> None:
    api = sdk(client)
    default = await api.embeddings.create(model=EMBEDDER, input=TEXTS)  # SDK asks for base64
    floats = await api.embeddings.create(model=EMBEDDER, input=TEXTS, encoding_format="float")
    a = np.array([d.embedding for d in default.data], dtype=np.float32)
    b = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert a.shape == (len(TEXTS), 384)
    assert np.array_equal(a, b)
    assert [d.index for d in default.data] == list(range(len(TEXTS)))
    assert cosine(a, minilm_reference).min() > 0.9999
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert default.model == EMBEDDER
    assert default.usage.prompt_tokens == default.usage.total_tokens == sum(minilm_token_counts)


async def test_openai_base64_is_little_endian_float32(client: Any) -> None:
    body = {"model": EMBEDDER, "input": "hello world", "encoding_format": "base64"}
    raw = await client.post("/v1/embeddings", json=body)
    floats = await client.post("/v1/embeddings", json={**body, "encoding_format": "float"})
    assert raw.status_code == floats.status_code == 200
    assert timing_headers_ok(raw.headers)
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(floats.json()["data"][0]["embedding"], np.float32))
    payload = floats.json()
    assert payload["object"] == "list" and payload["data"][0]["object"] == "embedding"


@pytest.mark.parametrize("dimensions", [32, 128])
async def test_openai_dimensions_renormalise_the_prefix(client: Any, dimensions: int) -> None:
    api = sdk(client)
    full = await api.embeddings.create(model=EMBEDDER, input=TEXTS, encoding_format="float")
    cut = await api.embeddings.create(model=EMBEDDER, input=TEXTS, dimensions=dimensions)
    full_v = np.array([d.embedding for d in full.data])
    cut_v = np.array([d.embedding for d in cut.data])
    assert cut_v.shape == (len(TEXTS), dimensions)
    prefix = full_v[:, :dimensions]
    expected = prefix / np.linalg.norm(prefix, axis=1, keepdims=True)
    assert np.allclose(cut_v, expected, atol=1e-5)


async def test_openai_token_id_input_matches_text(client: Any, minilm_hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(minilm_hf_dir))(TEXTS[:2])["input_ids"]
    api = sdk(client)
    by_text = await api.embeddings.create(model=EMBEDDER, input=TEXTS[:2])
    by_ids = await api.embeddings.create(model=EMBEDDER, input=ids)
    one = await api.embeddings.create(model=EMBEDDER, input=ids[0])
    a = np.array([d.embedding for d in by_text.data])
    b = np.array([d.embedding for d in by_ids.data])
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(one.data[0].embedding, a[0], atol=1e-6)
    assert by_ids.usage.prompt_tokens == sum(len(x) for x in ids)


async def test_openai_models_list(client: Any, registry: Any) -> None:
    models = await sdk(client).models.list()
    ids = [m.id for m in models.data]
    assert ids == [m.name for m in registry]
    assert {EMBEDDER, COSINE_RERANKER, "bert-rerank", "bert-nli"} <= set(ids)
    assert all(m.object == "model" and m.created > 0 for m in models.data)
    one = await sdk(client).models.retrieve("bert-nli")
    assert one.id == "bert-nli"


# -- the seed's README, verbatim bodies ---------------------------------------------------------


async def test_seed_models_listing(client: Any) -> None:
    r = await client.get("/models")
    assert r.status_code == 200
    assert r.json() == {
        "models": {
            "embedding_models": [EMBEDDER],
            "reranking_models": [COSINE_RERANKER, "bert-rerank"],
            "nli_models": ["bert-nli", "xlmr-nli", "bert-nli-tight"],
        }
    }


async def test_seed_embedding_example(client: Any, minilm_hf_dir: Path) -> None:
    payload = {"documents": ["這是一個測試文本", "另一個測試文本"]}
    r = await client.post(f"/infer/{EMBEDDER}", json=payload)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"embeddings", "elapsed_ms"}
    assert isinstance(body["elapsed_ms"], float) and body["elapsed_ms"] > 0
    vectors = np.array(body["embeddings"])
    assert vectors.shape == (2, 384)
    assert cosine(vectors, hf_embeddings(minilm_hf_dir, payload["documents"])).min() > 0.9999
    assert timing_headers_ok(r.headers)
    # A single string is accepted too.
    one = await client.post(f"/infer/{EMBEDDER}", json={"documents": "這是一個測試文本"})
    assert np.allclose(one.json()["embeddings"][0], vectors[0], atol=1e-6)


async def test_seed_rerank_example_gives_raw_logits(
    client: Any, bert_rerank_dir: ExportedModel
) -> None:
    payload = {
        "query": "機器學習的理論很重要",
        "documents": ["理論對於理解機器學習非常重要", "實作經驗在機器學習中也很關鍵"],
    }
    r = await client.post("/infer/bert-rerank", json=payload)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"scores", "elapsed_ms"}
    expected = hf_logits(
        bert_rerank_dir.hf_dir, [(payload["query"], d) for d in payload["documents"]]
    )
    assert np.abs(np.array(body["scores"]) - expected[:, 0]).max() < 1e-4


async def test_seed_nli_example(client: Any, bert_nli_dir: ExportedModel) -> None:
    payload = {"premises": ["今天天氣很好", "貓是動物"], "hypotheses": ["今天是晴天", "狗是動物"]}
    r = await client.post("/infer/bert-nli", json=payload)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"predictions", "logits", "elapsed_ms"}
    pairs = list(zip(payload["premises"], payload["hypotheses"], strict=True))
    expected = hf_logits(bert_nli_dir.hf_dir, pairs)
    assert np.abs(np.array(body["logits"]) - expected).max() < 1e-4
    labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert body["predictions"] == [labels[int(i)] for i in expected.argmax(axis=1)]


async def test_seed_openai_examples(client: Any, bert_rerank_dir: ExportedModel) -> None:
    api = sdk(client)
    text = "這是一個測試文本"
    response = await api.embeddings.create(input=[text], model=EMBEDDER)
    assert len(response.data[0].embedding) == 384

    documents = ["機器學習最好通過專案來學習", "理論對於理解機器學習很重要"]
    response = await api.embeddings.create(
        model="bert-rerank", input=documents, extra_body={"query": "理論對於理解機器學習很重要"}
    )
    scores = [data.embedding for data in response.data]
    expected = hf_logits(
        bert_rerank_dir.hf_dir, [("理論對於理解機器學習很重要", d) for d in documents]
    )
    assert [len(s) for s in scores] == [1, 1]
    assert np.abs(np.array(scores)[:, 0] - expected[:, 0]).max() < 1e-4
    # Without the SDK's base64 default the scores come as plain one-element lists.
    r = await client.post(
        "/v1/embeddings",
        json={"model": "bert-rerank", "input": documents, "query": "理論對於理解機器學習很重要"},
    )
    assert [len(d["embedding"]) for d in r.json()["data"]] == [1, 1]
    assert np.allclose([d["embedding"][0] for d in r.json()["data"]], np.array(scores)[:, 0])


# -- rerank -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
async def test_cohere_rerank_cross_encoder(
    client: Any, bert_rerank_dir: ExportedModel, path: str
) -> None:
    body = {
        "model": "bert-rerank",
        "query": QUERY,
        "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]],
        "top_n": 2,
        "return_documents": True,
    }
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert timing_headers_ok(r.headers)
    out = r.json()
    expected = sigmoid(hf_logits(bert_rerank_dir.hf_dir, [(QUERY, d) for d in DOCUMENTS])[:, 0])
    order = np.argsort(-expected)[:2]
    assert [x["index"] for x in out["results"]] == order.tolist()
    got = np.array([x["relevance_score"] for x in out["results"]])
    assert np.allclose(got, expected[order], atol=1e-5)
    assert [x["document"]["text"] for x in out["results"]] == [DOCUMENTS[i] for i in order]
    assert out["model"] == "bert-rerank" and out["id"]
    assert out["usage"]["total_tokens"] > 0
    if path == "/v2/rerank":
        assert out["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    else:
        assert "meta" not in out


async def test_cohere_v2_max_tokens_per_doc_cuts_each_document(
    client: Any, bert_rerank_dir: ExportedModel
) -> None:
    n = 4
    tok = transformers.AutoTokenizer.from_pretrained(str(bert_rerank_dir.hf_dir))
    # The reference cut: each document's first n tokens, by transformers' own offsets.
    cut = []
    for doc in DOCUMENTS:
        offsets = tok(doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        cut.append(doc[: offsets[n - 1][1]] if len(offsets) > n else doc)
    assert cut != list(DOCUMENTS)
    body = {"model": "bert-rerank", "query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": n}
    out = (await client.post("/v2/rerank", json=body)).json()
    expected = sigmoid(hf_logits(bert_rerank_dir.hf_dir, [(QUERY, d) for d in cut])[:, 0])
    got = {x["index"]: x["relevance_score"] for x in out["results"]}
    assert np.allclose([got[i] for i in range(len(DOCUMENTS))], expected, atol=1e-5)
    query_tokens = len(tok(QUERY)["input_ids"])
    assert out["usage"]["total_tokens"] == sum(
        query_tokens + len(tok(d)["input_ids"]) - 1 for d in cut
    )


async def test_rerank_defaults_and_cosine_reranker(client: Any, minilm_hf_dir: Path) -> None:
    r = await client.post(
        "/v1/rerank", json={"model": COSINE_RERANKER, "query": QUERY, "documents": DOCUMENTS}
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(DOCUMENTS) and all("document" not in x for x in results)
    vectors = hf_embeddings(minilm_hf_dir, [QUERY, *DOCUMENTS])
    expected = vectors[1:] @ vectors[0]
    assert [x["index"] for x in results] == np.argsort(-expected).tolist()
    got = {x["index"]: x["relevance_score"] for x in results}
    assert np.allclose([got[i] for i in range(len(DOCUMENTS))], expected, atol=1e-4)
    # No model: the first reranker served.
    default = await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert default.json()["model"] == COSINE_RERANKER


async def test_tei_rerank_dialect(client: Any, bert_rerank_dir: ExportedModel) -> None:
    body = {"model": "bert-rerank", "query": QUERY, "texts": DOCUMENTS, "return_text": True}
    r = await client.post("/rerank", json=body)
    assert r.status_code == 200
    out = r.json()
    assert isinstance(out, list) and len(out) == len(DOCUMENTS)
    logits = hf_logits(bert_rerank_dir.hf_dir, [(QUERY, d) for d in DOCUMENTS])[:, 0]
    assert [x["index"] for x in out] == np.argsort(-logits).tolist()
    assert np.allclose([x["score"] for x in out], np.sort(sigmoid(logits))[::-1], atol=1e-5)
    assert [x["text"] for x in out] == [DOCUMENTS[x["index"]] for x in out]
    raw = await client.post("/rerank", json={**body, "raw_scores": True, "return_text": False})
    assert all("text" not in x for x in raw.json())
    assert np.allclose([x["score"] for x in raw.json()], np.sort(logits)[::-1], atol=1e-4)


# -- TEI ----------------------------------------------------------------------------------------


async def test_tei_embed(client: Any, minilm_reference: np.ndarray) -> None:
    r = await client.post("/embed", json={"inputs": TEXTS})
    assert r.status_code == 200
    assert timing_headers_ok(r.headers)
    vectors = np.array(r.json())
    assert cosine(vectors, minilm_reference).min() > 0.9999
    one = await client.post(f"/embed?model={EMBEDDER}", json={"inputs": TEXTS[0]})
    assert np.allclose(one.json()[0], vectors[0], atol=1e-6)
    raw = await client.post("/embed", json={"inputs": TEXTS[:1], "normalize": False})
    raw_v = np.array(raw.json()[0])
    assert np.linalg.norm(raw_v) > 1.5  # MiniLM's mean-pooled vectors are not unit length
    assert np.allclose(raw_v / np.linalg.norm(raw_v), vectors[0], atol=1e-5)


async def test_tei_predict_pairs_and_texts(client: Any, bert_nli_dir: ExportedModel) -> None:
    labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
    pairs = [("A man plays a guitar.", "Someone makes music."), ("The cat sleeps.", "A dog runs.")]
    expected = hf_logits(bert_nli_dir.hf_dir, pairs)

    def ranked(logits: np.ndarray) -> list[tuple[str, float]]:
        probs = softmax(logits)
        return [(labels[int(i)], float(probs[i])) for i in np.argsort(-probs)]

    single = await client.post("/predict?model=bert-nli", json={"inputs": list(pairs[0])})
    assert single.status_code == 200
    got = [(x["label"], x["score"]) for x in single.json()]
    assert [g[0] for g in got] == [e[0] for e in ranked(expected[0])]
    assert np.allclose([g[1] for g in got], [e[1] for e in ranked(expected[0])], atol=1e-5)

    batch = await client.post("/predict", json={"inputs": [list(p) for p in pairs]})
    assert batch.status_code == 200  # default model: the first NLI model, bert-nli
    rows = batch.json()
    assert len(rows) == 2
    for row, logits in zip(rows, expected, strict=True):
        assert np.allclose([x["score"] for x in row], [e[1] for e in ranked(logits)], atol=1e-5)

    raw = await client.post(
        "/predict", json={"inputs": list(pairs[1]), "raw_scores": True, "model": "bert-nli"}
    )
    assert np.allclose(
        sorted((x["score"] for x in raw.json()), reverse=True),
        sorted(expected[1], reverse=True),
        atol=1e-4,
    )

    text = await client.post("/predict", json={"inputs": "A single sentence."})
    text_logits = hf_logits(bert_nli_dir.hf_dir, ["A single sentence."])[0]
    assert np.allclose(
        [x["score"] for x in text.json()], [e[1] for e in ranked(text_logits)], atol=1e-5
    )


async def test_tei_tokenize_and_info(client: Any, registry: Any) -> None:
    r = await client.post("/tokenize", json={"inputs": "hello world"})
    assert r.status_code == 200
    tokens = r.json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokens[0][1] == {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5}
    no_special = await client.post(
        "/tokenize", json={"inputs": ["hello world"], "add_special_tokens": False}
    )
    assert [t["text"] for t in no_special.json()[0]] == ["hello", "world"]

    info = (await client.get("/info")).json()
    assert info["model_id"] == EMBEDDER
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == registry.get(EMBEDDER).max_length
    assert info["max_client_batch_size"] == 64
    nli = (await client.get("/info", params={"model": "xlmr-nli"})).json()
    assert nli["model_type"] == {
        "classifier": {"id2label": {"0": "entailment", "1": "neutral", "2": "contradiction"}}
    }
    rr = (await client.get("/info?model=bert-rerank")).json()
    assert "reranker" in rr["model_type"]


# -- zero-shot --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["bert-nli", "xlmr-nli"])
@pytest.mark.parametrize("multi_label", [False, True])
async def test_zero_shot_matches_the_transformers_pipeline(
    client: Any, request: pytest.FixtureRequest, model: str, multi_label: bool
) -> None:
    from transformers import pipeline

    exported: ExportedModel = request.getfixturevalue(
        "bert_nli_dir" if model == "bert-nli" else "xlmr_nli_dir"
    )
    classifier = pipeline(
        "zero-shot-classification",
        model=str(exported.hf_dir),
        tokenizer=str(exported.hf_dir),
        device="cpu",
    )
    texts = ["The train to the airport leaves every fifteen minutes.", "今天天氣很好"]
    labels = ["travel", "weather", "cooking"]
    r = await client.post(
        "/v1/zero-shot",
        json={
            "model": model,
            "texts": texts,
            "candidate_labels": labels,
            "multi_label": multi_label,
        },
    )
    assert r.status_code == 200, r.text
    assert timing_headers_ok(r.headers)
    out = r.json()
    assert out["model"] == model and len(out["data"]) == 2
    for text, got in zip(texts, out["data"], strict=True):
        want = classifier(text, candidate_labels=labels, multi_label=multi_label)
        assert got["sequence"] == text
        assert got["labels"] == want["labels"]
        assert np.allclose(got["scores"], want["scores"], atol=1e-5)
    one = await client.post(
        "/v1/zero-shot",
        json={
            "model": model,
            "text": texts[0],
            "candidate_labels": labels,
            "hypothesis_template": "This text is about {}.",
        },
    )
    want = classifier(
        texts[0], candidate_labels=labels, hypothesis_template="This text is about {}."
    )
    assert one.json()["data"][0]["labels"] == want["labels"]
    assert np.allclose(one.json()["data"][0]["scores"], want["scores"], atol=1e-5)


# -- probes, status, OpenAPI ----------------------------------------------------------------


async def test_probes_and_status(client: Any, registry: Any) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    status = (await client.get("/models/status")).json()
    assert status["ready"] is True
    described = {m["name"]: m for m in status["models"]}
    assert set(described) == {m.name for m in registry}
    assert described[EMBEDDER]["dimensions"] == 384
    assert described["bert-nli"]["labels"] == ["contradiction", "entailment", "neutral"]
    assert described[EMBEDDER]["stats"]["items"] > 0


async def test_openapi_documents_every_route(client: Any) -> None:
    r = await client.get("/docs/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    paths = spec["paths"]
    for path in (
        "/models",
        "/infer/{model}",
        "/v1/embeddings",
        "/v1/models",
        "/v1/rerank",
        "/v2/rerank",
        "/rerank",
        "/embed",
        "/predict",
        "/tokenize",
        "/info",
        "/v1/zero-shot",
        "/models/load",
        "/models/unload",
        "/models/status",
        "/health",
        "/ready",
    ):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    for name in (
        "EmbeddingRequest",
        "EmbeddingResponse",
        "RerankRequest",
        "OpenAIError",
        "TEIError",
    ):
        assert any(key.endswith(name) for key in schemas), name
    docs = await client.get("/docs/")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
