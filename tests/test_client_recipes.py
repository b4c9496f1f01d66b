"""Every recipe of ``docs/clients.md``, run as written against a live ``trt-async serve``.

The clients come with the ``recipes`` extra. A recipe whose client library is not installed
is skipped with its name, except where ``TRT_ASYNC_REQUIRE_RECIPES`` is set (CI sets it, after
installing the extra): there it fails, so that no recipe goes unrun without anyone noticing.
The exchange each client makes is also checked at the HTTP level in
``tests/test_clients.py``, which always runs.

The hub recipe loads ``sentence-transformers/all-MiniLM-L6-v2`` at run time from a local
mirror of the hub (:mod:`tests.hub_mirror`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_fixtures import REPO, serving
from tests.hub_mirror import HubMirror, hub_env, sentence_transformers_repo
from tests.models import ExportedModel

pytestmark = pytest.mark.integration

DOCS = REPO / "docs" / "clients.md"
DOC_URL = "http://localhost:8887"
#: Set where every client is installed (CI): a recipe whose client is missing fails.
REQUIRE_ENV = "TRT_ASYNC_REQUIRE_RECIPES"
ADMIN_KEY = "recipes-admin-key"
_BLOCK = re.compile(r"^## (?P<title>.+?)$|^```(?P<lang>python|sh)\n(?P<code>.*?)^```", re.M | re.S)


def recipes() -> list[tuple[str, str, str]]:
    """(id, language, code) of every runnable block, named after its section."""
    out: list[tuple[str, str, str]] = []
    title = "intro"
    for m in _BLOCK.finditer(DOCS.read_text(encoding="utf-8")):
        if m["title"]:
            title = m["title"].strip()
            continue
        n = sum(1 for t, _, _ in out if t.startswith(title))
        out.append((f"{title} {n + 1}" if n else title, m["lang"], m["code"]))
    return out


RECIPES = recipes()


@pytest.fixture(scope="module")
def live_url(
    tmp_path_factory: pytest.TempPathFactory,
    minilm_hf_dir: Path,
    minilm_model_dir: Path,
    bert_nli_dir: ExportedModel,
) -> Iterator[str]:
    """The server the page describes: the embedded default's two names and ``xnli``, with
    run-time loads of sentence-transformers' hub models (from a mirror of the hub)."""
    root = tmp_path_factory.mktemp("recipes")
    config = root / "server.yaml"
    config.write_text(
        "embedding_models:\n"
        f"  all-MiniLM-L6-v2:\n    model_path: {os.fspath(minilm_model_dir)!r}\n"
        "reranking_models:\n"
        f"  all-MiniLM-L6-v2-rerank:\n    model_path: {os.fspath(minilm_model_dir)!r}\n"
        "nli_models:\n"
        f"  xnli:\n    model_path: {os.fspath(bert_nli_dir)!r}\n"
        f"server:\n  admin_api_key: {ADMIN_KEY}\n  hub_organisations: [sentence-transformers]\n",
        encoding="utf-8",
    )
    mirror = HubMirror().start()
    files = sentence_transformers_repo(minilm_hf_dir, minilm_model_dir / "model.onnx")
    mirror.add("sentence-transformers/all-MiniLM-L6-v2", files)
    try:
        with serving(config, root / "server.log", env=hub_env(mirror.url, root)) as url:
            yield url
    finally:
        mirror.stop()


def require_client(module: str) -> None:
    """Skip a recipe whose client is not installed; fail instead where every client must be."""
    if importlib.util.find_spec(module.split(".")[0]) is not None:
        return
    reason = f"the recipe needs {module}: pip install -e '.[recipes]'"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set: every recipe must run)")
    pytest.skip(reason)


def test_a_missing_client_fails_where_every_recipe_must_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs no_such_client_library"):
        require_client("no_such_client_library.embeddings")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="every recipe must run"):
        require_client("no_such_client_library.embeddings")
    require_client("openai")  # installed: neither


def test_the_page_has_a_recipe_for_every_client() -> None:
    titles = {name.split(" ")[0] for name, _, _ in RECIPES}
    assert {
        "OpenAI",
        "LangChain",
        "LlamaIndex",
        "Haystack",
        "huggingface_hub",
        "Cohere",
        "Voyage",
        "Jina",
        "Dify",
        "Hub",
    } <= titles, titles
    assert all(DOC_URL in code for name, _, code in RECIPES if name != "intro")


@pytest.mark.parametrize(
    ("lang", "code"),
    [pytest.param(lang, code, id=name) for name, lang, code in RECIPES],
)
def test_recipe_runs_against_a_live_server(live_url: str, lang: str, code: str) -> None:
    code = code.replace(DOC_URL, live_url)
    if lang == "python":
        for module in re.findall(r"^\s*(?:from|import) ([\w.]+)", code, re.M):
            require_client(module)
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    # The recipes reach only the loopback server; huggingface_hub's offline switch (set for
    # the test run; TRANSFORMERS_OFFLINE sets it too) would refuse even that URL.
    skip = ("OPENAI_", "CO_", "VOYAGE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    # The server's admin key, as the hub recipe reads it; no telemetry from Haystack.
    env.update(TRT_ASYNC_ADMIN_API_KEY=ADMIN_KEY, HAYSTACK_TELEMETRY_ENABLED="False")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
