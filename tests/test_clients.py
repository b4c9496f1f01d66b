"""Common clients, unchanged, against the real app: what each sends and what it reads.

Each client library is used where it is installed; a shape-level test of the same
exchange (the request the library sends, the fields it reads) always runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.http_fixtures import BASE_URL, EMBEDDER, assert_error

pytest_plugins = ["tests.http_fixtures"]

#: LangChain's OpenAIEmbeddings sends tiktoken (cl100k_base) ids by default; these are
#: "hello world" and "good morning", every id inside MiniLM's 30522-token vocabulary.
CL100K_IDS = [[15339, 1917], [19045, 6693]]


# -- OpenAI SDK / LangChain's default token ids ------------------------------------------------


async def test_langchain_style_token_ids_are_refused_with_the_fix(client: Any) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": CL100K_IDS})
    error = assert_error(r, 422, "openai")
    assert error["param"] == "input" and error["type"] == "invalid_request_error"
    assert "not a token-id list made by this model's tokenizer" in error["message"]
    assert "check_embedding_ctx_length=False" in error["message"]


async def test_openai_sdk_sees_the_refusal(client: Any, minilm_hf_dir: Path) -> None:
    openai = pytest.importorskip("openai")
    api = openai.AsyncOpenAI(api_key="EMPTY", base_url=f"{BASE_URL}/v1", http_client=client)
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length"):
        await api.embeddings.create(model=EMBEDDER, input=CL100K_IDS)
    # The model's own ids keep working and give the text's vector.
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(minilm_hf_dir))(["hello world"])["input_ids"]
    by_ids = await api.embeddings.create(model=EMBEDDER, input=ids)
    by_text = await api.embeddings.create(model=EMBEDDER, input="hello world")
    assert np.allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-6)


# -- TEI's root routes (huggingface_hub.InferenceClient(base_url=...), SageMaker) ----------------


@pytest.mark.parametrize("path", ["/", "/invocations"])
async def test_root_embeds_with_the_root_model(client: Any, path: str) -> None:
    # feature_extraction's body: the inputs and TEI's embed options at the top level.
    r = await client.post(path, json={"inputs": "hello world", "normalize": True})
    assert r.status_code == 200, r.text
    (vector,) = r.json()  # the first model in the config: the embedder
    direct = (await client.post("/embed", json={"inputs": "hello world"})).json()[0]
    assert np.allclose(vector, direct, atol=1e-6)


async def test_root_sentence_similarity_is_the_cosine_to_the_source(client: Any) -> None:
    sentences = ["Paris is in France.", "I like bread.", "hello world"]
    body = {"inputs": {"source_sentence": "hello world", "sentences": sentences}}
    r = await client.post("/", json={**body, "parameters": {}})
    assert r.status_code == 200, r.text
    scores = np.array(r.json())
    vectors = np.array(
        (await client.post("/embed", json={"inputs": ["hello world", *sentences]})).json()
    )
    assert np.allclose(scores, vectors[1:] @ vectors[0], atol=1e-5)
    assert scores[2] == pytest.approx(1.0, abs=1e-5)


async def test_root_text_classification_answers_a_list_per_input(client: Any) -> None:
    # text_classification's body: inputs and (possibly empty) parameters; a classifier is
    # chosen for it unless the URL names a model.
    r = await client.post("/?model=bert-nli", json={"inputs": "a text", "parameters": {}})
    assert r.status_code == 200, r.text
    (labels,) = r.json()
    assert sorted(x["label"] for x in labels) == ["contradiction", "entailment", "neutral"]
    assert sum(x["score"] for x in labels) == pytest.approx(1.0, abs=1e-5)
    assert [x["score"] for x in labels] == sorted((x["score"] for x in labels), reverse=True)
    top = await client.post("/", json={"inputs": ["a", "b"], "parameters": {"top_k": 1}})
    assert [len(row) for row in top.json()] == [1, 1]
    predict = (await client.post("/predict?model=bert-nli", json={"inputs": "a text"})).json()
    assert labels == predict


async def test_root_rerank_and_pairs_follow_the_body_and_the_model(client: Any) -> None:
    r = await client.post(
        "/", json={"query": "capital of France", "texts": ["bread", "Paris is the capital"]}
    )
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()] == [1, 0] and "score" in r.json()[0]
    pair = await client.post("/invocations?model=bert-nli", json={"inputs": ["a man", "a person"]})
    assert pair.status_code == 200, pair.text
    assert {x["label"] for x in pair.json()} == {"contradiction", "entailment", "neutral"}


async def test_root_probes_and_errors_speak_tei(client: Any) -> None:
    assert (await client.get("/")).json() == {"status": "ok"}
    assert (await client.get("/ping")).status_code == 200
    bad = await client.post("/", json={"inputs": ""})
    assert_error(bad, 400, "tei", "Empty")
    unknown = await client.post("/?model=nope", json={"inputs": "x"})
    assert "not found" in assert_error(unknown, 404, "tei")["error"]
    wrong = await client.post("/", json={"inputs": {"source_sentence": 1}})
    assert_error(wrong, 422, "tei", "Validation")


# -- Voyage's rerank and Jina's `detail` --------------------------------------------------------

#: What ``voyageai.Client.rerank(query, documents, model, top_k=None)`` posts to
#: ``{base_url}/rerank`` (its default ``truncation=True`` is always sent).
VOYAGE_BODY = {
    "query": "capital of France",
    "documents": ["Bread is baked daily.", "Paris is the capital of France."],
    "model": "bert-rerank",
    "top_k": None,
    "truncation": True,
}


async def test_voyage_request_gets_voyages_answer(client: Any) -> None:
    r = await client.post("/v1/rerank", json=VOYAGE_BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    # Voyage's client reads response.data[i].index / .relevance_score and usage.total_tokens.
    assert set(body) == {"object", "data", "model", "usage"} and body["object"] == "list"
    assert [set(d) for d in body["data"]] == [{"index", "relevance_score"}] * 2
    assert body["usage"]["total_tokens"] > 0 and body["model"] == "bert-rerank"
    best = (await client.post("/v1/rerank", json={**VOYAGE_BODY, "top_k": 1})).json()
    assert len(best["data"]) == 1 and best["data"][0] == body["data"][0]
    plain = await client.post(
        "/v1/rerank",
        json={k: v for k, v in VOYAGE_BODY.items() if k not in ("top_k", "truncation")},
    )
    results = plain.json()["results"]  # no Voyage field: Cohere's answer
    assert [(x["index"], x["relevance_score"]) for x in results] == [
        (d["index"], d["relevance_score"]) for d in body["data"]
    ]
    docs = (await client.post("/v1/rerank", json={**VOYAGE_BODY, "return_documents": True})).json()
    assert docs["data"][0]["document"] == VOYAGE_BODY["documents"][docs["data"][0]["index"]]


async def test_rerank_errors_carry_detail_for_jina_clients(client: Any) -> None:
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        r = await client.post(path, json={"model": "nope", "query": "q", "documents": ["d"]})
        error = assert_error(r, 404, "rerank")
        assert "not found" in r.json()["detail"] and error["code"] == "model_not_found"
    # Embeddings keep OpenAI's envelope alone.
    assert_error(
        await client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "openai"
    )
