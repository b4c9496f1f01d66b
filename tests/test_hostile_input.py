"""Hostile input: every malformed, oversized, nested, mis-encoded or path-tricking request is
answered with a 4xx in the dialect's body shape, never a 5xx or a traceback, and the server
keeps serving. Then schemathesis fuzzes the OpenAPI schema of a real server for 5xx.

Decisions the table pins down (limits as configured in ``tests.http_fixtures``: a 256 KiB
body limit, 64 inputs per request):

* a 1 MB string is a 413 here (over ``server.max_body_bytes``); a string under the limit,
  however long, is truncated to the model's length and served (200), as with the default
  16 MiB limit a 1 MB string would be;
* control characters and NUL escaped in a JSON string are served (the tokenizer's
  normaliser drops them); raw control bytes inside a string are invalid JSON (400);
* JSON nested deeper than the decoder recurses is a 400, not a RecursionError.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.http_fixtures import (
    COSINE_RERANKER,
    EMBEDDER,
    MAX_BODY_BYTES,
    assert_error,
    serving,
)
from tests.models import ExportedModel

pytest_plugins = ["tests.http_fixtures"]

DEEP = 10_000
DEEP_LISTS = b"[" * DEEP + b"]" * DEEP
DEEP_OBJECTS = b'{"a":' * DEEP + b"1" + b"}" * DEEP
MEGABYTE_TEXT = "word " * 200_000
M = EMBEDDER.encode()


@dataclass(frozen=True)
class Paths:
    """Folders the model-load cases point at."""

    root: Path
    outside: Path
    link_out: Path


Body = bytes | dict[str, Any] | Callable[[Paths], dict[str, Any]] | None


@dataclass(frozen=True)
class Hostile:
    id: str
    path: str
    body: Body
    status: int
    dialect: str
    #: Substrings the error message must contain (the field, the id, the reason).
    says: tuple[str, ...] = ()
    #: OpenAI's ``param`` field.
    param: str | None = None
    method: str = "POST"


def load(model_path: Callable[[Paths], str], **options: Any) -> Callable[[Paths], dict[str, Any]]:
    def body(paths: Paths) -> dict[str, Any]:
        out: dict[str, Any] = {"name": "evil", "kind": "reranker", "model_path": model_path(paths)}
        if options:
            out["options"] = {k: v(paths) if callable(v) else v for k, v in options.items()}
        return out

    return body


CASES = [
    # -- size ---------------------------------------------------------------------------------
    Hostile(
        "body-over-limit",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": "x" * (MAX_BODY_BYTES + 1)},
        413,
        "openai",
        ("max_body_bytes",),
    ),
    Hostile("string-1mb-tei", "/embed", {"inputs": MEGABYTE_TEXT}, 413, "tei", ("max_body_bytes",)),
    Hostile("string-1mb-seed", f"/infer/{EMBEDDER}", {"documents": [MEGABYTE_TEXT]}, 413, "detail"),
    # -- malformed JSON -----------------------------------------------------------------------
    Hostile(
        "truncated-json",
        "/v1/embeddings",
        b'{"model": "x", "input": ',
        400,
        "openai",
        ("not valid JSON",),
    ),
    Hostile("truncated-json-tei", "/embed", b'{"inputs": [1,', 400, "tei", ("not valid JSON",)),
    Hostile(
        "single-quotes",
        f"/infer/{EMBEDDER}",
        b"{'documents': ['x']}",
        400,
        "detail",
        ("not valid JSON",),
    ),
    Hostile(
        "trailing-garbage",
        "/v1/embeddings",
        b'{"model": "%s", "input": "x"} tail' % M,
        400,
        "openai",
        ("not valid JSON",),
    ),
    # -- wrong types --------------------------------------------------------------------------
    Hostile(
        "object-for-input",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": {"text": "x"}},
        422,
        "openai",
        ("input",),
        "input",
    ),
    Hostile("list-for-body", "/v1/embeddings", b'["a", "list"]', 422, "openai", ("object",)),
    Hostile(
        "string-for-bool", "/embed", {"inputs": "x", "normalize": "yes"}, 422, "tei", ("normalize",)
    ),
    Hostile(
        "list-for-query",
        "/v1/rerank",
        {"query": ["q"], "documents": ["a"]},
        422,
        "rerank",
        ("query",),
        "query",
    ),
    Hostile(
        "string-for-top-n",
        "/v1/rerank",
        {"query": "q", "documents": ["a"], "top_n": "three"},
        422,
        "rerank",
        ("top_n",),
        "top_n",
    ),
    Hostile(
        "int-for-premise",
        "/infer/bert-nli",
        {"premises": [1], "hypotheses": ["h"]},
        422,
        "detail",
        ("premises",),
    ),
    Hostile(
        "int-for-name",
        "/models/load",
        {"name": 5, "kind": "reranker", "model_path": "x"},
        422,
        "detail",
        ("name",),
    ),
    # -- deep nesting -------------------------------------------------------------------------
    Hostile(
        "10000-nested-lists", "/v1/embeddings", DEEP_LISTS, 400, "openai", ("nested too deeply",)
    ),
    Hostile(
        "10000-nested-in-field",
        "/embed",
        b'{"inputs": ' + DEEP_LISTS + b"}",
        400,
        "tei",
        ("nested too deeply",),
    ),
    Hostile(
        "10000-nested-objects",
        f"/infer/{EMBEDDER}",
        b'{"documents": ["x"], "extra": ' + DEEP_OBJECTS + b"}",
        400,
        "detail",
        ("nested too deeply",),
    ),
    Hostile(
        "10000-nested-rerank",
        "/rerank",
        b'{"query": "q", "texts": ' + DEEP_LISTS + b"}",
        400,
        "rerank",
        ("nested too deeply",),
    ),
    Hostile(
        "100-nested-input",
        "/v1/embeddings",
        b'{"model": "%s", "input": %s}' % (M, b"[" * 100 + b"]" * 100),
        422,
        "openai",
        ("input",),
    ),
    # -- encoding ------------------------------------------------------------------------------
    Hostile(
        "latin1-byte",
        "/v1/embeddings",
        b'{"model": "%s", "input": "caf\xe9"}' % M,
        400,
        "openai",
        ("UTF-8",),
    ),
    Hostile("invalid-utf8-tei", "/embed", b'{"inputs": "\xff\xfe"}', 400, "tei", ("UTF-8",)),
    Hostile(
        "lone-surrogate",
        "/v1/embeddings",
        b'{"model": "%s", "input": "\\ud800"}' % M,
        400,
        "openai",
        ("not valid JSON",),
    ),
    Hostile(
        "raw-control-byte",
        "/v1/embeddings",
        b'{"model": "%s", "input": "a\x01b"}' % M,
        400,
        "openai",
        ("not valid JSON",),
    ),
    # -- empty --------------------------------------------------------------------------------
    Hostile(
        "empty-list",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": []},
        400,
        "openai",
        ("empty",),
        "input",
    ),
    Hostile(
        "empty-string",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": ""},
        400,
        "openai",
        ("empty",),
        "input",
    ),
    Hostile("empty-string-in-list", "/embed", {"inputs": ["a", ""]}, 400, "tei", ("empty",)),
    Hostile(
        "empty-documents",
        "/v1/rerank",
        {"query": "q", "documents": []},
        400,
        "rerank",
        ("empty",),
        "documents",
    ),
    *(
        Hostile(
            f"empty-document-{model}",
            "/v1/rerank",
            {"model": model, "query": "q", "documents": ["a", "", "b"]},
            400,
            "rerank",
            ("documents[1]", "empty"),
            "documents",
        )
        for model in (COSINE_RERANKER, "bert-rerank")
    ),
    Hostile("empty-query", "/rerank", {"query": "", "texts": ["a"]}, 400, "tei", ("query",)),
    Hostile(
        "empty-token-list",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": [[]]},
        400,
        "openai",
        ("empty",),
    ),
    Hostile(
        "empty-seed-documents", f"/infer/{EMBEDDER}", {"documents": []}, 400, "detail", ("empty",)
    ),
    # -- token ids ----------------------------------------------------------------------------
    Hostile(
        "negative-token-id",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": [[101, -1, 102]]},
        422,
        "openai",
        ("-1", "vocabulary"),
        "input",
    ),
    Hostile(
        "token-id-past-vocab",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": [[101, 30522, 102]]},
        422,
        "openai",
        ("30522", "vocabulary"),
        "input",
    ),
    Hostile(
        "token-id-past-int64",
        "/embed",
        b'{"inputs": [[101, 99999999999999999999999]]}',
        422,
        "tei",
        ("99999999999999999999999",),
    ),
    Hostile(
        "flat-negative-ids",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": [101, -7]},
        422,
        "openai",
        ("-7",),
    ),
    # -- numbers ------------------------------------------------------------------------------
    Hostile(
        "nan-top-n",
        "/v1/rerank",
        b'{"query": "q", "documents": ["a"], "top_n": NaN}',
        400,
        "rerank",
        ("not valid JSON",),
    ),
    Hostile(
        "infinity-top-n",
        "/v1/rerank",
        b'{"query": "q", "documents": ["a"], "top_n": Infinity}',
        400,
        "rerank",
        ("not valid JSON",),
    ),
    Hostile(
        "dimensions-1e309",
        "/v1/embeddings",
        b'{"model": "%s", "input": "x", "dimensions": 1e309}' % M,
        400,
        "openai",
        ("out of range",),
    ),
    Hostile(
        "dimensions-float",
        "/v1/embeddings",
        {"model": EMBEDDER, "input": "x", "dimensions": 1.5},
        422,
        "openai",
        ("dimensions",),
        "dimensions",
    ),
    Hostile(
        "dimensions-10e30",
        "/embed",
        {"inputs": "x", "dimensions": 10**30},
        422,
        "tei",
        ("dimensions",),
    ),
    Hostile(
        "negative-top-n",
        "/v1/rerank",
        {"query": "q", "documents": ["a"], "top_n": -1},
        422,
        "rerank",
        ("top_n",),
        "top_n",
    ),
    # -- unknown models -----------------------------------------------------------------------
    Hostile(
        "unknown-model",
        "/v1/embeddings",
        {"model": "nope", "input": "x"},
        404,
        "openai",
        ("'nope' not found", EMBEDDER, "bert-nli"),
        "model",
    ),
    Hostile("unknown-model-tei", "/embed?model=nope", {"inputs": "x"}, 404, "tei", (EMBEDDER,)),
    Hostile("unknown-model-seed", "/infer/nope", {"documents": ["x"]}, 404, "detail", (EMBEDDER,)),
    Hostile(
        "unknown-model-card", "/v1/models/nope", None, 404, "openai", (EMBEDDER,), method="GET"
    ),
    # -- path tricks --------------------------------------------------------------------------
    Hostile("encoded-dot-dot", "/infer/..%2F..%2Fetc", {"documents": ["x"]}, 404, "detail"),
    Hostile("encoded-slash", "/infer/a%2Fb", {"documents": ["x"]}, 404, "detail"),
    Hostile("dot-dot-card", "/v1/models/..%2F..%2Fetc%2Fpasswd", None, 404, "openai", method="GET"),
    Hostile(
        "dot-dot-model-name",
        "/v1/embeddings",
        {"model": "../../etc/passwd", "input": "x"},
        404,
        "openai",
        ("'../../etc/passwd' not found", EMBEDDER),
        "model",
    ),
    Hostile("nul-model-name", "/embed?model=%00", {"inputs": "x"}, 404, "tei", ("not found",)),
    Hostile(
        "load-relative-dot-dot",
        "/models/load",
        load(lambda p: "../"),
        403,
        "detail",
        ("outside server.model_roots",),
    ),
    Hostile(
        "load-absolute",
        "/models/load",
        load(lambda p: "/etc"),
        403,
        "detail",
        ("outside server.model_roots",),
    ),
    Hostile(
        "load-root-dot-dot",
        "/models/load",
        load(lambda p: f"{p.root}/../{p.outside.name}"),
        403,
        "detail",
        ("outside server.model_roots",),
    ),
    Hostile(
        "load-symlink-out",
        "/models/load",
        load(lambda p: str(p.link_out)),
        403,
        "detail",
        ("outside server.model_roots",),
    ),
    Hostile(
        "load-tokenizer-out",
        "/models/load",
        load(lambda p: str(p.root / "x"), tokenizer_path=lambda p: str(p.outside)),
        403,
        "detail",
        ("tokenizer_path",),
    ),
    Hostile("load-nul", "/models/load", load(lambda p: f"{p.root}/a\0b"), 400, "detail", ("NUL",)),
    Hostile(
        "load-name-too-long",
        "/models/load",
        load(lambda p: str(p.root / ("a" * 5000))),
        400,
        "detail",
        ("cannot be read",),
    ),
    # -- format strings -----------------------------------------------------------------------
    Hostile(
        "template-attribute",
        "/v1/zero-shot",
        {
            "model": "bert-nli",
            "text": "x",
            "candidate_labels": ["a"],
            "hypothesis_template": "{0.__class__.__mro__}",
        },
        422,
        "openai",
        ("hypothesis_template",),
        "hypothesis_template",
    ),
    Hostile(
        "template-unbalanced",
        "/v1/zero-shot",
        {
            "model": "bert-nli",
            "text": "x",
            "candidate_labels": ["a"],
            "hypothesis_template": "about {} {",
        },
        422,
        "openai",
        ("hypothesis_template",),
        "hypothesis_template",
    ),
]


@pytest.fixture(scope="module")
def paths(model_root: Path, bert_rerank_dir: ExportedModel) -> Paths:
    outside = Path(os.fspath(bert_rerank_dir))
    link = model_root / "hostile-link-out"
    if not link.is_symlink():
        link.symlink_to(outside, target_is_directory=True)
    return Paths(model_root, outside, link)


async def still_serving(client: Any) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "still here"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_request_gets_a_clean_4xx(client: Any, paths: Paths, case: Hostile) -> None:
    body = case.body(paths) if callable(case.body) else case.body
    if isinstance(body, bytes):
        r = await client.request(
            case.method, case.path, content=body, headers={"content-type": "application/json"}
        )
    elif body is None:
        r = await client.request(case.method, case.path)
    else:
        r = await client.request(case.method, case.path, json=body)
    error = assert_error(r, case.status, case.dialect)
    message = {"openai": "message", "rerank": "message", "tei": "error", "detail": "detail"}[
        case.dialect
    ]
    message = error[message]
    for part in case.says:
        assert part in message, message
    if case.param is not None:
        assert error["param"] == case.param, error
    for leak in ("Traceback", 'File "', "RecursionError", "UnicodeDecodeError", "ValueError"):
        assert leak not in r.text
    await still_serving(client)


async def test_control_characters_are_served_and_long_text_is_truncated(
    client: Any, registry: Any
) -> None:
    texts = ["tab\there\x07bell", "nul\x00inside", "\x00", "zero\u200bwidth\ufeffbom", "   "]
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts})
    assert r.status_code == 200, r.text
    vectors = np.array([d["embedding"] for d in r.json()["data"]])
    assert vectors.shape == (len(texts), 384) and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)

    # Under the body limit, any length is truncated to the model's and served.
    limit = registry.get(EMBEDDER).max_length
    long = "word " * (MAX_BODY_BYTES // 5 - 100)
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": long})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == limit
    r = await client.post("/embed", json={"inputs": long, "truncate": False})
    assert "less than" in assert_error(r, 422, "tei", "Validation")["error"]


async def test_nothing_was_loaded_and_the_server_still_serves(client: Any) -> None:
    listing = (await client.get("/models/status")).json()
    assert "evil" not in [m["name"] for m in listing["models"]]
    await still_serving(client)
    assert (await client.get("/ready")).status_code == 200


# -- schemathesis --------------------------------------------------------------------------------

#: Management routes change the server's state; everything else is fuzzed.
MANAGEMENT = r"^/models/(load|unload)$"
EXAMPLES = 10


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory,
    minilm_model_dir: Path,
    bert_rerank_dir: ExportedModel,
    bert_nli_dir: ExportedModel,
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("fuzz")
    config = folder / "config.yaml"
    config.write_text(
        "embedding_models:\n"
        f"  {EMBEDDER}:\n    model_path: {os.fspath(minilm_model_dir)!r}\n"
        "reranking_models:\n"
        f"  bert-rerank:\n    model_path: {os.fspath(bert_rerank_dir)!r}\n"
        "nli_models:\n"
        f"  bert-nli:\n    model_path: {os.fspath(bert_nli_dir)!r}\n"
        f"server:\n  max_client_batch_size: 64\n  max_body_bytes: {MAX_BODY_BYTES}\n",
        encoding="utf-8",
    )
    with serving(config, folder / "server.log") as url:
        yield url


@pytest.mark.integration
@pytest.mark.slow
def test_schemathesis_finds_no_server_error(fuzz_server: str) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{fuzz_server}/docs/openapi.json", timeout=30)
    schema = schema.exclude(path_regex=MANAGEMENT)
    server_errors: list[str] = []
    calls: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/embeddings", "POST /embed", "POST /infer/{model}", "GET /models"} <= labels

    def fuzz(operation: Any, mode: Any) -> None:
        key = f"{operation.label} ({mode.value})"

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            calls[key] = calls.get(key, 0) + 1
            response = case.call(base_url=fuzz_server, timeout=30)
            if response.status_code >= 500:
                server_errors.append(f"{key}: {response.status_code} {response.text[:300]}")

        # An operation without parameters or body has nothing to break: Unsatisfiable.
        with contextlib.suppress(Unsatisfiable):
            call()

    for operation in operations:
        for mode in schemathesis.GenerationMode:
            fuzz(operation, mode)

    assert not server_errors, "\n".join(server_errors)
    assert {key.rpartition(" (")[0] for key in calls} == labels  # every operation was called
    assert sum(calls.values()) >= 100
    r = httpx.post(f"{fuzz_server}/v1/embeddings", json={"model": EMBEDDER, "input": "fine"})
    assert r.status_code == 200
