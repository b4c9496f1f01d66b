"""Every error a client can meet: its status, headers and body shape in each dialect, and the
server still serving afterwards. Also the API key and model management."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import litestar.concurrency
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.http_fixtures import (
    API_KEY,
    BASE_URL,
    COSINE_RERANKER,
    EMBEDDER,
    MAX_BODY_BYTES,
    MAX_CLIENT_BATCH,
    http_config,
)
from tests.models import ExportedModel
from trt_async.app import create_app
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ModelState

pytest_plugins = ["tests.http_fixtures"]

LONG_TEXT = "word " * 600  # 602 tokens with [CLS] and [SEP]: over MiniLM's limit


def openai_error(
    r: Any, status: int, param: str | None = None, envelope: frozenset[str] = frozenset({"error"})
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == envelope
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    return dict(err)


def rerank_error(r: Any, status: int, param: str | None = None) -> dict[str, Any]:
    """Rerank routes: OpenAI's envelope, plus ``detail`` (the same message) for Jina clients."""
    err = openai_error(r, status, param, envelope=frozenset({"error", "detail"}))
    assert r.json()["detail"] == err["message"]
    return err


def tei_error(r: Any, status: int, error_type: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    return str(body["error"])


def detail_error(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail"}
    return str(body["detail"])


async def still_serving(client: Any) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "still here"})
    assert r.status_code == 200


# -- 404 ------------------------------------------------------------------------------------


async def test_unknown_model_lists_known_ones(client: Any) -> None:
    err = openai_error(
        await client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model"
    )
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    assert EMBEDDER in err["message"] and "bert-nli" in err["message"]
    assert "bert-rerank" in detail_error(
        await client.post("/infer/nope", json={"documents": ["x"]}), 404
    )
    assert EMBEDDER in tei_error(
        await client.post("/embed?model=nope", json={"inputs": "x"}), 404, "Validation"
    )
    rerank_error(
        await client.post("/v1/rerank", json={"model": "nope", "query": "q", "documents": ["d"]}),
        404,
    )
    await still_serving(client)


async def test_unknown_route_and_method(client: Any) -> None:
    openai_error(await client.get("/v1/nothing"), 404)
    assert "/nothing" in detail_error(await client.get("/nothing"), 404)
    openai_error(await client.delete("/v1/embeddings"), 405)


# -- 422 / 400 --------------------------------------------------------------------------------


async def test_schema_violations_name_the_field(client: Any) -> None:
    err = openai_error(
        await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": 3}), 422, "input"
    )
    assert "input" in err["message"]
    openai_error(await client.post("/v1/embeddings", json={"model": EMBEDDER}), 422, "input")
    openai_error(
        await client.post(
            "/v1/embeddings", json={"model": EMBEDDER, "input": "x", "encoding_format": "int8"}
        ),
        422,
        "encoding_format",
    )
    openai_error(
        await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["a", 1]}),
        422,
        "input",
    )
    msg = tei_error(await client.post("/embed", json={"inputs": {"a": 1}}), 422, "Validation")
    assert "inputs" in msg
    assert "documents" in detail_error(
        await client.post(f"/infer/{EMBEDDER}", json={"documents": 5}), 422
    )
    # /rerank answers a schema error in the dialect the body speaks.
    tei_error(await client.post("/rerank", json={"query": 1, "texts": ["a"]}), 422, "Validation")
    rerank_error(await client.post("/rerank", json={"query": 1, "documents": ["a"]}), 422, "query")
    rerank_error(
        await client.post("/v1/rerank", json={"query": "q", "documents": ["a"], "top_n": 0}),
        422,
        "top_n",
    )
    openai_error(
        await client.post(
            "/v1/embeddings", json={"model": EMBEDDER, "input": "x", "dimensions": 999}
        ),
        422,
        "dimensions",
    )
    await still_serving(client)


async def test_malformed_json_is_400(client: Any) -> None:
    headers = {"content-type": "application/json"}
    err = openai_error(
        await client.post("/v1/embeddings", content=b"{not json", headers=headers), 400
    )
    assert "JSON" in err["message"]
    tei_error(await client.post("/embed", content=b"[1,", headers=headers), 400, "Validation")


async def test_empty_inputs_are_400(client: Any) -> None:
    err = openai_error(
        await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ""}), 400, "input"
    )
    assert "empty" in err["message"]
    openai_error(
        await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["a", ""]}), 400
    )
    openai_error(await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": []}), 400)
    tei_error(await client.post("/embed", json={"inputs": ""}), 400, "Empty")
    tei_error(await client.post("/rerank", json={"query": "q", "texts": []}), 400, "Empty")
    rerank_error(
        await client.post("/v1/rerank", json={"query": "", "documents": ["a"]}), 400, "query"
    )
    detail_error(await client.post("/infer/bert-nli", json={"premises": [], "hypotheses": []}), 400)
    openai_error(
        await client.post("/v1/zero-shot", json={"text": "hi", "candidate_labels": []}), 400
    )


async def test_each_dialect_names_its_own_fields(client: Any) -> None:
    """Core errors name parts of the request; each dialect's handler words them with the
    field names its clients send."""
    empty_tei = tei_error(await client.post("/embed", json={"inputs": []}), 400, "Empty")
    assert empty_tei == "inputs is empty; send at least one text"
    empty_texts = tei_error(
        await client.post("/rerank", json={"query": "q", "texts": []}), 400, "Empty"
    )
    assert empty_texts == "texts is empty; send at least one document"
    documents = rerank_error(
        await client.post("/v1/rerank", json={"query": "q", "documents": []}), 400, "documents"
    )
    assert documents["message"] == "documents is empty; send at least one document"
    labels = openai_error(
        await client.post("/v1/zero-shot", json={"text": "hi", "candidate_labels": []}),
        400,
        "candidate_labels",
    )
    assert labels["message"] == "candidate_labels is empty; send at least one label"
    too_wide = await client.post(
        "/v2/embed", json={"model": EMBEDDER, "texts": ["a"], "output_dimension": 100000}
    )
    assert too_wide.status_code == 422, too_wide.text
    assert too_wide.json()["message"].startswith("output_dimension must be between 1 and 384")
    cut = await client.post(
        "/v2/embed", json={"model": EMBEDDER, "texts": [LONG_TEXT], "truncate": "NONE"}
    )
    assert cut.status_code == 422 and cut.json()["message"].endswith("send truncate=END.")
    openai_long = openai_error(
        await client.post(
            "/v1/embeddings", json={"model": EMBEDDER, "input": LONG_TEXT, "truncate": False}
        ),
        422,
        "input",
    )
    assert openai_long["message"].endswith("Shorten it or send truncate=true.")


async def test_wrong_model_kind_is_400(client: Any) -> None:
    err = openai_error(
        await client.post("/v1/embeddings", json={"model": "bert-nli", "input": "x"}), 400, "model"
    )
    assert "nli" in err["message"]
    openai_error(
        await client.post(
            "/v1/zero-shot", json={"model": EMBEDDER, "text": "x", "candidate_labels": ["a"]}
        ),
        400,
    )
    tei_error(
        await client.post("/predict", json={"inputs": "x", "model": EMBEDDER}), 400, "Validation"
    )
    openai_error(
        await client.post("/v1/embeddings", json={"model": "bert-rerank", "input": ["x"]}),
        422,
        "query",
    )


async def test_input_too_long_without_truncation_is_422(
    client: Any, registry: ModelRegistry
) -> None:
    limit = registry.get(EMBEDDER).max_length
    msg = tei_error(
        await client.post("/embed", json={"inputs": LONG_TEXT, "truncate": False}),
        422,
        "Validation",
    )
    assert f"less than {limit + 1} tokens" in msg and "Given: 602" in msg
    err = openai_error(
        await client.post(
            "/v1/embeddings", json={"model": EMBEDDER, "input": LONG_TEXT, "truncate": False}
        ),
        422,
    )
    assert "Given: 602" in err["message"]
    # The error names the offending field and item, not the server's internal arrangement.
    cosine = rerank_error(
        await client.post(
            "/v1/rerank",
            json={
                "model": COSINE_RERANKER,
                "query": "q",
                "documents": ["ok", LONG_TEXT],
                "truncate": False,
            },
        ),
        422,
    )
    assert cosine["param"] == "documents" and cosine["message"].startswith("document 1 ")
    shot = openai_error(
        await client.post(
            "/v1/zero-shot",
            json={
                "model": "bert-nli",
                "texts": ["ok", LONG_TEXT],
                "truncate": False,
                "candidate_labels": ["a", "b", "c"],
            },
        ),
        422,
    )
    assert shot["param"] == "text" and shot["message"].startswith("text 1 with its hypothesis")
    # Truncation (the default) serves it.
    ok = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": LONG_TEXT})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == limit


# -- 413 --------------------------------------------------------------------------------------


async def test_too_many_inputs_is_413(client: Any) -> None:
    texts = ["x"] * (MAX_CLIENT_BATCH + 1)
    err = openai_error(
        await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}), 413
    )
    assert str(MAX_CLIENT_BATCH) in err["message"]
    tei_error(await client.post("/embed", json={"inputs": texts}), 413, "Validation")
    detail_error(await client.post(f"/infer/{EMBEDDER}", json={"documents": texts}), 413)
    ok = await client.post("/embed", json={"inputs": texts[:-1]})
    assert ok.status_code == 200 and len(ok.json()) == MAX_CLIENT_BATCH


async def test_body_over_the_limit_is_413(client: Any) -> None:
    big = "x" * (MAX_BODY_BYTES + 10)
    err = openai_error(
        await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": big}), 413
    )
    assert "max_body_bytes" in err["message"]
    tei_error(await client.post("/embed", json={"inputs": big}), 413, "Validation")
    detail_error(await client.post(f"/infer/{EMBEDDER}", json={"documents": big}), 413)
    await still_serving(client)


# -- 429 / 503 / 500 --------------------------------------------------------------------------


async def test_request_larger_than_the_queue_is_413_never_429(client: Any) -> None:
    # A 429 says "retry later"; a request the queue can never hold must not say that, or a
    # retrying client loops forever (the queue-full 429 is tested in test_reliability).
    pairs = [["a premise", "a hypothesis"]] * 3  # the tight model queues 2 items at most
    r = await client.post("/predict?model=bert-nli-tight", json={"inputs": pairs})
    assert "max_queue_items: 2" in tei_error(r, 413, "Validation")
    assert "retry-after" not in r.headers
    r = await client.post(
        "/v1/zero-shot",
        json={"model": "bert-nli-tight", "text": "x", "candidate_labels": ["a", "b", "c"]},
    )
    err = openai_error(r, 413)
    assert err["type"] == "invalid_request_error" and "max_queue_items" in err["message"]
    assert "retry-after" not in r.headers
    ok = await client.post("/predict?model=bert-nli-tight", json={"inputs": pairs[:2]})
    assert ok.status_code == 200


async def test_model_not_ready_is_503(client: Any, registry: ModelRegistry) -> None:
    model = registry.get("bert-nli-tight")
    model.state = ModelState.DRAINING
    try:
        r = await client.post("/predict?model=bert-nli-tight", json={"inputs": ["a", "b"]})
        assert "draining" in tei_error(r, 503, "Unhealthy")
        openai_error(
            await client.post(
                "/v1/zero-shot",
                json={"model": "bert-nli-tight", "text": "x", "candidate_labels": ["a"]},
            ),
            503,
        )
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["models"] == {"bert-nli-tight": "draining"}
    finally:
        model.state = ModelState.READY
    assert (await client.get("/ready")).status_code == 200
    assert (await client.get("/health")).status_code == 200


async def test_backend_failure_is_500_or_tei_424_with_an_error_id(
    client: Any, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = registry.get("bert-nli-tight").runtime.backend

    def broken(bucket: Any) -> Any:
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(backend, "execute", broken)
    r = await client.post("/predict?model=bert-nli-tight", json={"inputs": ["a", "b"]})
    msg = tei_error(r, 424, "Backend")  # TEI answers backend failures with 424
    assert "error id" in msg and "simulated" not in msg
    err = openai_error(
        await client.post(
            "/v1/zero-shot",
            json={"model": "bert-nli-tight", "text": "x", "candidate_labels": ["a"]},
        ),
        500,
    )
    assert err["code"] == "backend_error" and err["type"] == "server_error"
    monkeypatch.undo()
    ok = await client.post("/predict?model=bert-nli-tight", json={"inputs": ["a", "b"]})
    assert ok.status_code == 200
    await still_serving(client)


# -- model management -------------------------------------------------------------------------


@pytest.fixture
def staged_model(model_root: Path, bert_rerank_dir: ExportedModel) -> Path:
    target = model_root / "staged-rerank"
    if not target.exists():
        shutil.copytree(os.fspath(bert_rerank_dir), target)
    return target


async def test_load_use_and_unload_a_model(client: Any, staged_model: Path) -> None:
    body = {"name": "loaded-rr", "kind": "reranker", "model_path": str(staged_model)}
    r = await client.post("/models/load", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "loaded-rr" and r.json()["state"] == "ready"
    assert "loaded-rr" in (await client.get("/models")).json()["models"]["reranking_models"]
    assert "already loaded" in detail_error(await client.post("/models/load", json=body), 409)

    docs = [f"document number {i}" for i in range(32)]
    pending = asyncio.create_task(
        client.post("/infer/loaded-rr", json={"query": "a query", "documents": docs})
    )
    await asyncio.sleep(0.05)
    unloaded = await client.post("/models/unload", json={"name": "loaded-rr"})
    assert unloaded.status_code == 200 and unloaded.json() == {"unloaded": "loaded-rr"}
    drained = await pending  # queued before the unload: answered, not dropped
    assert drained.status_code == 200 and len(drained.json()["scores"]) == 32
    detail_error(
        await client.post("/infer/loaded-rr", json={"query": "q", "documents": ["d"]}), 404
    )
    detail_error(await client.post("/models/unload", json={"name": "loaded-rr"}), 404)
    await still_serving(client)


async def test_load_refuses_paths_outside_the_roots(
    client: Any, model_root: Path, bert_rerank_dir: ExportedModel, staged_model: Path
) -> None:
    escape = str(model_root / ".." / Path(os.fspath(bert_rerank_dir)).name)
    body = {"name": "evil", "kind": "reranker", "model_path": escape}
    assert "model_roots" in detail_error(await client.post("/models/load", json=body), 403)
    link = model_root / "link-out"
    if not link.exists():
        link.symlink_to(os.fspath(bert_rerank_dir), target_is_directory=True)
    detail_error(await client.post("/models/load", json={**body, "model_path": str(link)}), 403)
    detail_error(await client.post("/models/load", json={**body, "model_path": "/etc"}), 403)
    tokenizer_escape = {
        **body,
        "model_path": str(staged_model),
        "options": {"tokenizer_path": os.fspath(bert_rerank_dir)},
    }
    detail_error(await client.post("/models/load", json=tokenizer_escape), 403)
    missing = {**body, "model_path": str(model_root / "missing")}
    detail_error(await client.post("/models/load", json=missing), 400)
    bad_option = {**body, "model_path": str(staged_model), "options": {"max_length": "long"}}
    assert "max_length" in detail_error(await client.post("/models/load", json=bad_option), 422)
    detail_error(await client.post("/models/load", json={**body, "kind": "vision"}), 422)
    no_batch_one = {**body, "model_path": str(staged_model), "options": {"batch_sizes": [2, 4]}}
    assert "batch sizes must include 1" in detail_error(
        await client.post("/models/load", json=no_batch_one), 422
    )
    too_long = {**body, "model_path": str(staged_model), "options": {"max_length": 100000}}
    assert "position table" in detail_error(await client.post("/models/load", json=too_long), 422)
    assert "evil" not in [m["name"] for m in (await client.get("/models/status")).json()["models"]]


# -- API key ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(
    minilm_model_dir: Path,
    bert_rerank_dir: ExportedModel,
    bert_nli_dir: ExportedModel,
    xlmr_nli_dir: ExportedModel,
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    config = http_config(minilm_model_dir, bert_rerank_dir, bert_nli_dir, xlmr_nli_dir)
    # Only the small models: the key check does not need MiniLM.
    config.embedding_models.clear()
    config.reranking_models.pop("all-MiniLM-L6-v2-rerank")
    config.server.api_key = API_KEY
    async with AsyncTestClient(create_app(config), base_url=BASE_URL) as client:
        yield client


async def test_api_key_is_required_except_for_probes(secured: Any) -> None:
    body = {"query": "q", "documents": ["d"]}
    r = await secured.post("/v1/rerank", json=body)
    rerank_error(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    wrong = await secured.post("/v1/rerank", json=body, headers={"Authorization": "Bearer nope"})
    assert rerank_error(wrong, 401)["type"] == "authentication_error"
    tei_error(await secured.post("/predict", json={"inputs": "x"}), 401, "Unauthorized")
    detail_error(await secured.get("/models"), 401)
    detail_error(await secured.post("/models/unload", json={"name": "bert-rerank"}), 401)
    ok = await secured.post("/v1/rerank", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    for path in ("/health", "/ready", "/docs/openapi.json"):
        assert (await secured.get(path)).status_code == 200, path


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.jobs = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return super().submit(*args, **kwargs)


async def test_requests_take_no_trip_through_litestars_thread_pool(
    secured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Litestar runs any plain-function guard, dependency or handler in its thread pool: a
    thread hop there and back on every request. The key checks are coroutines, so neither
    an accepted nor a refused request uses that pool (a plain ``def`` guard fails this)."""
    counting = CountingExecutor()
    # The pool Litestar's sync_to_thread hands work to (set_asyncio_executor refuses to
    # change it while a loop runs).
    monkeypatch.setattr(litestar.concurrency, "get_asyncio_executor", lambda: counting)
    try:
        key = {"Authorization": f"Bearer {API_KEY}"}
        body = {"query": "q", "documents": ["d"]}
        assert (await secured.post("/v1/rerank", json=body, headers=key)).status_code == 200
        predicted = await secured.post("/predict", json={"inputs": "x"}, headers=key)
        assert predicted.status_code == 200
        rerank_error(await secured.post("/v1/rerank", json=body), 401)
        detail_error(await secured.post("/models/unload", json={"name": "x"}, headers=key), 401)
    finally:
        counting.shutdown()
    assert counting.jobs == 0
