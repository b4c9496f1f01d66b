"""The docs page and the OpenAPI schema, on an app that is built but never started.

No model is loaded: the schema, the page and its assets do not need one.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from trt_async.app import create_app
from trt_async.core.config import ModelConfig
from trt_async.http.openai_api import EmbeddingRequest
from trt_async.http.rerank import AnyRerankRequest, RerankRequest
from trt_async.http.seed import InferRequest
from trt_async.http.tei import EmbedRequest, PredictRequest, TokenizeRequest
from trt_async.http.zero_shot import ZeroShotRequest
from trt_async.tools.embedded import embedded_config

NOT_A_FOLDER = "never-loaded"

#: The request Struct of every route that has example bodies.
REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {
    "/v1/embeddings": EmbeddingRequest,
    "/v1/rerank": RerankRequest,
    "/v2/rerank": RerankRequest,
    "/rerank": AnyRerankRequest,
    "/embed": EmbedRequest,
    "/predict": PredictRequest,
    "/tokenize": TokenizeRequest,
    "/v1/zero-shot": ZeroShotRequest,
    "/infer/{model}": InferRequest,
}
TEI_ROUTES = ("/embed", "/predict")


@pytest.fixture(scope="module")
def docs_client() -> Iterator[TestClient[Litestar]]:
    config = embedded_config(Path(NOT_A_FOLDER))
    config.nli_models["my-nli"] = ModelConfig(model_path=NOT_A_FOLDER)
    config.reranking_models["my-reranker"] = ModelConfig(model_path=NOT_A_FOLDER)
    config.server.api_key = "docs-need-no-key"
    # Outside a ``with`` block the test client does not run the lifespan: nothing loads.
    yield TestClient(create_app(config), base_url="http://docs.test")


@pytest.fixture(scope="module")
def spec(docs_client: TestClient[Litestar]) -> dict[str, Any]:
    r = docs_client.get("/docs/openapi.json")
    assert r.status_code == 200
    result: dict[str, Any] = r.json()
    return result


class _Assets(HTMLParser):
    """Every URL the page makes the browser fetch (scripts, styles, icons, images)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "src" or (name == "href" and tag == "link")):
                self.urls.append(value)


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_docs_page_loads_everything_from_this_server(
    docs_client: TestClient[Litestar], path: str
) -> None:
    page = docs_client.get(path)
    assert page.status_code == 200, page.text
    parser = _Assets()
    parser.feed(page.text)
    assert len(parser.urls) >= 3, parser.urls  # style sheet, two scripts, icon
    for url in parser.urls:
        # Not "//host/..." nor "https://host/...": a path on this server.
        assert url.startswith("/") and not url.startswith("//"), url
        asset = docs_client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    scripts = [u for u in parser.urls if u.endswith(".js")]
    assert any("swagger-ui-bundle" in u for u in scripts), scripts
    assert "cdn" not in page.text.lower()


def test_docs_assets_are_swagger_ui_5(docs_client: TestClient[Litestar]) -> None:
    # Litestar writes OpenAPI 3.1, which Swagger UI renders from version 5 on.
    bundle = docs_client.get("/docs/assets/swagger-ui-bundle.js").text
    assert '"5.' in bundle
    assert docs_client.get("/docs/openapi.json").json()["openapi"].startswith("3.1")


def _examples(spec: dict[str, Any], path: str) -> dict[str, Any]:
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    examples: dict[str, Any] = body.get("examples", {})
    return {name: example["value"] for name, example in examples.items()}


def test_every_example_body_is_valid_and_names_a_served_model(spec: dict[str, Any]) -> None:
    served = {"all-MiniLM-L6-v2", "all-MiniLM-L6-v2-rerank", "my-nli", "my-reranker"}
    for path, struct in REQUEST_TYPES.items():
        examples = _examples(spec, path)
        assert examples, path
        for name, value in examples.items():
            msgspec.convert(value, struct, strict=True)  # raises on a wrong example
            assert value.get("model", "all-MiniLM-L6-v2") in served, (path, name, value)
    root = _examples(spec, "/")
    assert {"sentence similarity", "text classification", "rerank (TEI)"} <= set(root)
    assert _examples(spec, "/v1/rerank")["rerank (Voyage: top_k)"]["top_k"] == 1
    infer = spec["paths"]["/infer/{model}"]["post"]["parameters"]
    (model_param,) = [p for p in infer if p["name"] == "model"]
    assert set(model_param["examples"]) == served


def test_examples_fit_each_route(spec: dict[str, Any]) -> None:
    # The OpenAI example embeds: a `query` would switch to the seed's rerank mode.
    for value in _examples(spec, "/v1/embeddings").values():
        assert "query" not in value and value["model"] == "all-MiniLM-L6-v2"
    # Rerank routes name the first reranker, zero-shot and /predict the NLI model.
    first_reranker = {"all-MiniLM-L6-v2-rerank"}
    assert {v["model"] for v in _examples(spec, "/v2/rerank").values()} == first_reranker
    assert {v["model"] for v in _examples(spec, "/v1/zero-shot").values()} == {"my-nli"}
    assert {v["model"] for v in _examples(spec, "/predict").values()} == {"my-nli"}
    rerank = _examples(spec, "/rerank")
    assert any("texts" in v for v in rerank.values()) and any(
        "documents" in v for v in rerank.values()
    )


def test_metrics_route_is_documented(spec: dict[str, Any]) -> None:
    metrics = spec["paths"]["/metrics"]["get"]
    assert "text/plain" in metrics["responses"]["200"]["content"]
    assert "OpenMetrics" in metrics["description"]


def test_error_statuses_are_the_ones_each_route_answers(spec: dict[str, Any]) -> None:
    for path in TEI_ROUTES:
        responses = spec["paths"][path]["post"]["responses"]
        # TEI answers a backend failure with 424, never 500.
        assert "424" in responses and "500" not in responses, (path, list(responses))
        assert responses["424"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "TEIError"
        )
    openai = spec["paths"]["/v1/embeddings"]["post"]["responses"]
    assert "500" in openai and "424" not in openai
    for code in ("400", "401", "404", "413", "422", "429", "503"):
        assert code in openai, code


def test_fields_and_schemas_are_described(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in (
        "EmbeddingRequest",
        "RerankRequest",
        "AnyRerankRequest",
        "EmbedRequest",
        "PredictRequest",
        "TokenizeRequest",
        "ZeroShotRequest",
        "InferRequest",
        "LoadRequest",
    ):
        schema = schemas[name]
        assert schema.get("description"), name
        undocumented = [k for k, v in schema["properties"].items() if not v.get("description")]
        assert not undocumented, (name, undocumented)
    assert "sorted by score" in schemas["RerankResponse"]["description"]


def test_metrics_negotiate_the_format(docs_client: TestClient[Litestar]) -> None:
    plain = docs_client.get("/metrics")
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert any(f.name == "trt_async_requests" for f in text_string_to_metric_families(plain.text))
    om = docs_client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert om.status_code == 200
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.rstrip().endswith("# EOF")
    # The OpenMetrics parser refuses Prometheus text (no "# EOF"), so this checks the format.
    assert any(f.name == "trt_async_requests" for f in openmetrics_families(om.text))
