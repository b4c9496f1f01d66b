"""Hub models (``trt-async serve --model``, ``model_path: hf://``, ``trt-async pull`` and
``POST /models/load``) against a local mirror of the hub (:mod:`tests.hub_mirror`), with
``HF_ENDPOINT`` pointed at it and every cache in a temporary folder.

huggingface_hub reads ``HF_ENDPOINT`` and the cache folders once, when it is imported, so
every resolution runs in a process of its own (the command line, as users run it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from perf.hub_start import WATCH_TORCH
from tests.http_fixtures import REPO, assert_error, free_port, hf_logits, stop
from tests.hub_mirror import HubMirror, MirrorRepo, hf_folder, hub_env, sentence_transformers_repo
from tests.models import ExportedModel, write_bert_classifier
from trt_async.backends.modelfiles import ModelFiles, sentence_transformers_pooling_modes
from trt_async.core.config import (
    Config,
    ModelConfig,
    ServerConfig,
    dump_config,
    parse_config,
)
from trt_async.core.errors import Forbidden, InvalidInput
from trt_async.core.hub import HubError, HubRef, check_hub_load, infer_task, parse_ref

pytest_plugins = ["tests.http_fixtures"]

ST_REPO = "sentence-transformers/all-MiniLM-L6-v2"
GATED_REPO = "gated-org/all-MiniLM-L6-v2"
TINY_REPO = "mirror-tiny/bert-rerank"
#: all-MiniLM-L6-v2 without sentence-transformers' files, as some ONNX copies are published.
PLAIN_REPO = "mirror-plain/all-MiniLM-L6-v2"
GRANTED_TOKEN = "hf_granted_test_token"
ADMIN_KEY = "hub-test-admin-key"
TEXTS = ["hello world", "你好，世界", "The cat is sleeping on the warm windowsill."]
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Bread is baked daily.", "今天天氣很好"]

# -- a process of its own -----------------------------------------------------------------------


#: As if these were not installed: ``import`` fails and ``find_spec`` finds nothing.
_HIDE = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def site_dir(root: Path, code: str) -> Path:
    """A folder whose ``sitecustomize`` runs ``code`` at the start of every Python process."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sitecustomize.py").write_text(code, encoding="utf-8")
    return root


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trt_async", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pull(env: dict[str, str], ref: str, *args: str) -> tuple[Path, str]:
    """``trt-async pull``: the folder served and what it said on stderr."""
    done = run_cli(env, "pull", ref, *args)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip()), done.stderr


def refusal(env: dict[str, str], *args: str, one_line: bool = True) -> str:
    """``trt-async serve ... --port P`` that must refuse to start: its last stderr line.

    With ``one_line``, that line is all it wrote (it refused before downloading anything).
    """
    port = str(free_port())
    done = run_cli(env, "serve", *args, "--host", "127.0.0.1", "--port", port, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    if one_line:
        assert len(lines) == 1, done.stderr
    assert lines[-1].startswith("trt-async serve: "), done.stderr
    return lines[-1]


@contextlib.contextmanager
def serving(env: dict[str, str], args: list[str], log: Path) -> Iterator[tuple[str, float]]:
    """``trt-async serve`` with ``args``: its URL and the seconds from start to ``/ready``."""
    port = free_port()
    command = [sys.executable, "-m", "trt_async", "serve", *args]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in time:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, time.perf_counter() - started
    finally:
        stop(proc)


def embed(url: str, model: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)


def rerank(url: str, model: str) -> np.ndarray:
    body = {"model": model, "query": QUERY, "documents": DOCUMENTS}
    r = httpx.post(f"{url}/v1/rerank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    scores = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    return np.array([scores[i] for i in range(len(DOCUMENTS))])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)))


def snapshot_files(root: Path, repo_id: str, commit: str) -> set[str]:
    """The files of one commit in the Hugging Face cache under ``root``."""
    snapshot = root / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}


# -- quick: references, the allowlist, the config -------------------------------------------------


def test_references_parse_as_the_hub_writes_them() -> None:
    assert parse_ref("BAAI/bge-small-en-v1.5") == HubRef("BAAI/bge-small-en-v1.5")
    assert parse_ref("hf://BAAI/bge-m3@v1.0") == HubRef("BAAI/bge-m3", "v1.0")
    assert parse_ref("org/name@refs%2Fpr%2F7/onnx/model_O4.onnx") == HubRef(
        "org/name", "refs/pr/7", "onnx/model_O4.onnx"
    )
    assert parse_ref("org/name/onnx/model_qint8_avx512.onnx") == HubRef(
        "org/name", None, "onnx/model_qint8_avx512.onnx"
    )
    for bad in ("bge-m3", "org/name/pytorch_model.bin", "org/name/../x.onnx", "a/b/c", "o--x/n"):
        with pytest.raises(HubError):
            parse_ref(bad)


def test_task_comes_from_the_architecture_and_its_labels() -> None:
    assert infer_task({"architectures": ["BertModel"]}) == "embed"
    assert infer_task({}) == "embed"
    classifier = ["XLMRobertaForSequenceClassification"]
    assert infer_task({"architectures": classifier, "id2label": {"0": "LABEL_0"}}) == "rerank"
    three = {"0": "contradiction", "1": "entailment", "2": "neutral"}
    assert infer_task({"architectures": classifier, "id2label": three}) == "nli"
    assert infer_task({"architectures": classifier, "num_labels": 1}) == "rerank"


def test_run_time_hub_loads_need_an_allowed_organisation() -> None:
    with pytest.raises(Forbidden, match="disabled; list the organisations"):
        check_hub_load("hf://BAAI/bge-m3", [], "model_path")
    with pytest.raises(Forbidden, match="organisation 'evil' is not in"):
        check_hub_load("hf://evil/model", ["BAAI"], "model_path")
    with pytest.raises(InvalidInput, match="not a hub model"):
        check_hub_load("hf://no-slash", ["BAAI"], "model_path")
    # Organisation names are not case sensitive on the hub.
    assert check_hub_load("hf://baai/bge-m3", ["BAAI"], "model_path").repo_id == "baai/bge-m3"


def test_hub_references_in_a_config_are_not_file_paths(tmp_path: Path) -> None:
    text = "embedding_models:\n  e:\n    model_path: hf://BAAI/bge-small-en-v1.5@main\n"
    config = parse_config(text, base=tmp_path)
    assert config.embedding_models["e"].model_path == "hf://BAAI/bge-small-en-v1.5@main"


def test_the_worker_config_reads_back_unchanged() -> None:
    config = Config(server=ServerConfig(port=9000, hub_organisations=["BAAI"], api_key="k"))
    config.nli_models["x"] = ModelConfig(
        model_path="/models/x", labels={0: "no", 2: "yes"}, queue_timeout_s=2.5, lengths=[8, 64]
    )
    config.embedding_models["e"] = ModelConfig(model_path="/models/e", normalize=False)
    assert parse_config(dump_config(config)) == config


async def test_the_load_route_refuses_hub_models_by_default(
    client: AsyncTestClient[object],
) -> None:
    body = {"name": "hub", "kind": "embedding", "model_path": "hf://BAAI/bge-small-en-v1.5"}
    error = assert_error(await client.post("/models/load", json=body), 403, "detail")
    assert "server.hub_organisations" in error["detail"]
    body["model_path"] = "hf://not a reference"
    assert_error(await client.post("/models/load", json=body), 422, "detail")


# -- refusals: one line, exit code 2, before any port is bound ---------------------------------


def _files(folder: Path, contents: dict[str, bytes | str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, content in contents.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def error_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubMirror]:
    """Repositories that cannot be served, made of small stand-in files (each is refused
    before its graph would be read)."""
    root = tmp_path_factory.mktemp("error-repos")
    mirror = HubMirror().start()
    embedder = json.dumps({"architectures": ["BertModel"]})
    graph = b"\x08\x07" + os.urandom(4096)  # an LFS file: hashed and checked when fetched
    broken = b"\x08\x07" + os.urandom(4096)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    mirror.add(
        "err-gated/model",
        _files(
            root / "gated",
            {
                "config.json": embedder,
                "tokenizer.json": "{}",
                "1_Pooling/config.json": json.dumps({"pooling_mode_cls_token": True}),
                "onnx/model.onnx": graph,
            },
        ),
        gated=True,
        granted={GRANTED_TOKEN},
    )
    mirror.add(
        "err-broken/no-pooling",
        _files(
            root / "no-pooling",
            {"config.json": embedder, "tokenizer.json": "{}", "onnx/model.onnx": graph},
        ),
    )
    mirror.add(
        "err-broken/no-tokenizer",
        _files(
            root / "no-tok",
            {"config.json": embedder, "vocab.txt": "[PAD]\n", "onnx/model.onnx": graph},
        ),
    )
    mirror.add(
        "err-broken/dense-head",
        _files(
            root / "dense",
            {
                "config.json": embedder,
                "tokenizer.json": "{}",
                "modules.json": json.dumps([*modules, dense]),
                "1_Pooling/config.json": json.dumps({"pooling_mode_mean_tokens": True}),
                "onnx/model.onnx": graph,
            },
        ),
    )
    mirror.add(
        "err-broken/max-pooling",
        _files(
            root / "max",
            {
                "config.json": embedder,
                "tokenizer.json": "{}",
                "modules.json": json.dumps(modules),
                "1_Pooling/config.json": json.dumps({"pooling_mode_max_tokens": True}),
                "onnx/model.onnx": graph,
            },
        ),
    )
    mirror.add(
        "err-broken/default-prompt",
        _files(
            root / "default-prompt",
            {
                "config.json": embedder,
                "tokenizer.json": "{}",
                "config_sentence_transformers.json": json.dumps(
                    {"prompts": {"query": "query: "}, "default_prompt_name": "query"}
                ),
                "1_Pooling/config.json": json.dumps({"pooling_mode": "mean"}),
                "onnx/model.onnx": graph,
            },
        ),
    )
    for name, pooling in (("two-poolings", ["cls", "mean"]), ("new-pooling", "mean")):
        mirror.add(
            f"err-broken/{name}",
            _files(
                root / name,
                {
                    "config.json": embedder,
                    "tokenizer.json": "{}",
                    "modules.json": json.dumps(modules),
                    "1_Pooling/config.json": json.dumps({"pooling_mode": pooling}),
                    "onnx/model.onnx": graph,
                },
            ),
        )
    classifier = json.dumps(
        {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    )
    mirror.add(
        "err-tiny/weights-only",
        _files(
            root / "weights",
            {"config.json": classifier, "tokenizer.json": "{}", "model.safetensors": graph},
        ),
    )
    corrupt = mirror.add(
        "err-broken/corrupt",
        _files(
            root / "corrupt",
            {"config.json": embedder, "tokenizer.json": "{}", "onnx/model.onnx": broken},
        ),
    )
    # Served with a byte changed (its own bytes: the other repositories share the graph's).
    mirror.corrupt.add(hashlib.sha256(broken).hexdigest())
    assert corrupt.refs["main"]
    yield mirror
    mirror.stop()


@pytest.mark.parametrize(
    ("model", "env", "expected"),
    [
        pytest.param(
            "nobody/nothing",
            {},
            "nobody/nothing: no such model repository on http://",
            id="unknown",
        ),
        pytest.param(
            "err-gated/model",
            {},
            "err-gated/model is gated: accept its conditions at http://",
            id="gated-without-token",
        ),
        pytest.param(
            "err-gated/model@v9",
            {"HF_TOKEN": GRANTED_TOKEN},
            "err-gated/model: no revision 'v9' (a branch, tag or commit",
            id="no-such-revision",
        ),
        pytest.param(
            "err-gated/model/onnx/model_O4.onnx",
            {"HF_TOKEN": GRANTED_TOKEN},
            "no file onnx/model_O4.onnx; its ONNX graphs: onnx/model.onnx",
            id="no-such-graph",
        ),
        pytest.param(
            "err-broken/no-tokenizer",
            {},
            "tokenizer.json missing (the fast tokenizer file the server tokenises with)",
            id="no-tokenizer",
        ),
        pytest.param(
            "err-tiny/weights-only",
            {"HIDE": "torch"},
            "has no ONNX graph (onnx/model.onnx); exporting it needs torch: pip install "
            "torch==2.13.0 then pip install 'trt-async[cpu,export]'",
            id="no-onnx-no-torch",
        ),
        pytest.param(
            "err-gated/model",
            {"HIDE": "huggingface_hub"},
            "serving hub models needs huggingface_hub: pip install 'trt-async[hub]'",
            id="no-hub-extra",
        ),
        pytest.param(
            "err-gated/model",
            {"HF_ENDPOINT": "http://127.0.0.1:9"},
            "the hub (http://127.0.0.1:9) cannot be reached (ConnectError",
            id="no-network-nothing-cached",
        ),
        pytest.param(
            "err-gated/model",
            {"HF_HUB_OFFLINE": "1"},
            "cannot be reached (HF_HUB_OFFLINE is set) and this revision is not in the cache",
            id="offline-nothing-cached",
        ),
        pytest.param("not-a-repo", {}, "'not-a-repo' is not a hub model", id="bad-reference"),
    ],
)
def test_a_hub_model_that_cannot_be_served_is_refused_in_one_line(
    error_mirror: HubMirror, tmp_path: Path, model: str, env: dict[str, str], expected: str
) -> None:
    env = dict(env)
    hide = env.pop("HIDE", None)
    site = site_dir(tmp_path / "site", _HIDE.format(names=[hide])) if hide else None
    line = refusal(hub_env(error_mirror.url, tmp_path, site=site, **env), "--model", model)
    assert expected in line, line
    assert not any((tmp_path / "cache").rglob("trt_async_hub.json"))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param(
            "err-broken/dense-head",
            "modules.json has a Dense module after the transformer, which the ONNX graph does "
            "not hold",
            id="dense-head",
        ),
        pytest.param(
            "err-broken/max-pooling",
            "1_Pooling/config.json pools by max; the server pools by one of cls, mean, last",
            id="max-pooling",
        ),
        pytest.param(
            "err-broken/two-poolings",
            "1_Pooling/config.json pools by cls + mean; the server pools by one of cls, mean, last",
            id="concatenated-poolings",
        ),
        pytest.param(
            "err-broken/default-prompt",
            "its default prompt ('query') goes before every input, which this server's "
            "embedding routes do not do yet",
            id="default-prompt",
        ),
        pytest.param(
            "err-broken/corrupt", "onnx/model.onnx does not match the hub's sha256", id="corrupt"
        ),
        pytest.param(
            "err-broken/no-pooling",
            "an embedding model without sentence-transformers' pooling config "
            "(1_Pooling/config.json), so the server cannot tell how to pool it; serve it from "
            "a config (model_path: hf://err-broken/no-pooling) with pooling: cls, mean or last",
            id="no-pooling",
        ),
    ],
)
def test_files_that_do_not_make_a_servable_model_are_refused_after_the_download(
    error_mirror: HubMirror, tmp_path: Path, model: str, expected: str
) -> None:
    line = refusal(hub_env(error_mirror.url, tmp_path), "--model", model, one_line=False)
    assert expected in line, line
    if model != "err-broken/no-pooling":  # its files are whole; the config must add pooling
        assert not any((tmp_path / "cache").rglob("trt_async_hub.json"))


def test_a_config_hub_model_error_names_the_file_and_the_model(
    error_mirror: HubMirror, tmp_path: Path
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("embedding_models:\n  mine:\n    model_path: hf://nobody/nothing\n")
    line = refusal(hub_env(error_mirror.url, tmp_path), "--config", str(config))
    assert f"{config}: model 'mine' (embedding_models): nobody/nothing: no such model" in line


def test_a_gated_model_downloads_with_a_granted_token(
    error_mirror: HubMirror, tmp_path: Path
) -> None:
    env = hub_env(error_mirror.url, tmp_path, HF_TOKEN="hf_someone_else")
    done = run_cli(env, "pull", "err-gated/model")
    assert done.returncode == 2
    assert "the token in use has no access to it: request access at" in done.stderr
    folder, _ = pull({**env, "HF_TOKEN": GRANTED_TOKEN}, "err-gated/model")
    assert (folder / "model.onnx").is_file() and (folder / "tokenizer.json").is_file()


def test_both_pooling_formats_of_sentence_transformers_are_read(
    error_mirror: HubMirror, tmp_path: Path
) -> None:
    assert sentence_transformers_pooling_modes({"pooling_mode_cls_token": True}) == ["cls"]
    assert sentence_transformers_pooling_modes({"pooling_mode": "mean"}) == ["mean"]
    assert sentence_transformers_pooling_modes({"pooling_mode": ["cls", "max"]}) == ["cls", "max"]
    # sentence-transformers 6 writes {"pooling_mode": "mean"}: served with mean pooling.
    folder, _ = pull(hub_env(error_mirror.url, tmp_path), "err-broken/new-pooling")
    assert ModelFiles.resolve(folder).st_pooling == "mean"


def test_model_options_follow_their_model(error_mirror: HubMirror, tmp_path: Path) -> None:
    env = hub_env(error_mirror.url, tmp_path)
    done = run_cli(env, "serve", "--task", "embed", "--model", "a/b")
    assert done.returncode == 2 and "--task applies to the --model before it" in done.stderr


# -- serving: the real all-MiniLM-L6-v2 with its ONNX graph, a tiny model without one ----------


@pytest.fixture(scope="module")
def mirror(
    minilm_hf_dir: Path,
    minilm_model_dir: Path,
    bert_rerank_dir: ExportedModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HubMirror]:
    """sentence-transformers/all-MiniLM-L6-v2 as the hub has it (its files, with
    onnx/model.onnx) plus a second graph, the same again gated, and a tiny cross-encoder
    without ONNX."""
    import onnx

    root = tmp_path_factory.mktemp("mirror")
    variant = onnx.load(str(minilm_model_dir / "model.onnx"))
    variant.doc_string = "the same graph stored again, as a repository's variants are"
    onnx.save(variant, str(root / "model_O1.onnx"))
    files = sentence_transformers_repo(minilm_hf_dir, minilm_model_dir / "model.onnx")
    files["onnx/model_O1.onnx"] = root / "model_O1.onnx"
    mirror = HubMirror().start()
    mirror.add(ST_REPO, files)
    mirror.add(GATED_REPO, files, gated=True, granted={GRANTED_TOKEN})
    mirror.add(TINY_REPO, hf_folder(bert_rerank_dir.hf_dir))
    plain = {k: v for k, v in files.items() if not k.startswith(("1_Pooling/", "modules.json"))}
    mirror.add(PLAIN_REPO, plain)
    yield mirror
    mirror.stop()


def _repo(mirror: HubMirror, repo_id: str) -> MirrorRepo:
    return mirror.repos[repo_id]


@pytest.mark.slow
@pytest.mark.integration
def test_a_repository_with_onnx_serves_without_torch_as_its_local_folder_does(
    mirror: HubMirror, minilm_model_dir: Path, minilm_hf_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    watch = tmp_path / "imports.log"
    env = hub_env(
        mirror.url,
        tmp_path,
        site=site_dir(tmp_path / "site", WATCH_TORCH),
        IMPORT_WATCH_LOG=str(watch),
    )
    config = tmp_path / "server.yaml"
    config.write_text(
        "embedding_models:\n"
        f"  local-minilm:\n    model_path: {json.dumps(str(minilm_model_dir))}\n"
        f"  plain-minilm:\n    model_path: hf://{PLAIN_REPO}\n    pooling: mean\n"
        "server:\n"
        f"  admin_api_key: {ADMIN_KEY}\n"
        f"  hub_organisations: [sentence-transformers, mirror-tiny]\n",
        encoding="utf-8",
    )
    commit = _repo(mirror, ST_REPO).refs["main"]
    args = ["--config", str(config), "--model", ST_REPO]
    args += ["--model", f"{ST_REPO}/onnx/model_O1.onnx", "--name", "minilm-o1"]
    log = tmp_path / "serve.log"
    with serving(env, args, log) as (url, seconds):
        print(f"serve --model {ST_REPO} (ONNX) to /ready: {seconds:.1f} s")
        local = embed(url, "local-minilm", TEXTS)
        assert np.abs(embed(url, "all-MiniLM-L6-v2", TEXTS) - local).max() < 1e-6
        assert np.abs(embed(url, "minilm-o1", TEXTS) - local).max() < 1e-6
        assert np.abs(embed(url, "plain-minilm", TEXTS) - local).max() < 1e-6
        # The load route: the same repository pinned to its commit, at run time.
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        body = {
            "name": "minilm-pinned",
            "kind": "embedding",
            "model_path": f"hf://{ST_REPO}@{commit}",
        }
        r = httpx.post(f"{url}/models/load", json=body, headers=admin, timeout=120)
        assert r.status_code == 201, r.text
        assert np.abs(embed(url, "minilm-pinned", TEXTS) - local).max() < 1e-6
        body = {"name": "g", "kind": "embedding", "model_path": f"hf://{GATED_REPO}"}
        r = httpx.post(f"{url}/models/load", json=body, headers=admin, timeout=60)
        assert r.status_code == 403 and "'gated-org' is not in" in r.json()["detail"], r.text
        assert httpx.post(f"{url}/models/load", json=body, timeout=60).status_code == 401
        # A serving process exports nothing: a repository without ONNX needs a pull first.
        body = {"name": "t", "kind": "reranker", "model_path": f"hf://{TINY_REPO}"}
        r = httpx.post(f"{url}/models/load", json=body, headers=admin, timeout=60)
        assert r.status_code == 400 and f"trt-async pull {TINY_REPO}@" in r.json()["detail"]

    lines = log.read_text(encoding="utf-8").splitlines()
    # Each download says what it fetches, from where, first (the config's model first).
    assert lines[0].startswith(f"trt-async serve: fetching {PLAIN_REPO} (commit "), lines[0]
    fetching = f"trt-async serve: fetching {ST_REPO} (commit {commit[:12]}): 9 files, "
    assert any(line.startswith(fetching) for line in lines), lines
    assert not watch.exists(), watch.read_text()  # no process looked for torch
    # Only what serving needs was downloaded: no weights, README or vocab.txt.
    assert snapshot_files(tmp_path, ST_REPO, commit) == {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "onnx/model.onnx",
        "onnx/model_O1.onnx",
    }
    # An independent reference: sentence-transformers on the repository's weights.
    reference = SentenceTransformer(str(minilm_hf_dir), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    assert np.abs(local - reference).max() < 1e-4


@pytest.mark.slow
@pytest.mark.integration
def test_a_repository_without_onnx_is_exported_once_per_commit(
    mirror: HubMirror, bert_rerank_dir: ExportedModel, tmp_path: Path
) -> None:
    env = hub_env(mirror.url, tmp_path)
    config = tmp_path / "server.yaml"
    config.write_text(
        f"reranking_models:\n  local-rerank:\n    model_path: {json.dumps(str(bert_rerank_dir))}\n",
        encoding="utf-8",
    )
    first_commit = _repo(mirror, TINY_REPO).refs["main"]
    log = tmp_path / "serve.log"
    with serving(env, ["--config", str(config), "--model", TINY_REPO], log) as (url, seconds):
        print(f"serve --model {TINY_REPO} (export) to /ready: {seconds:.1f} s")
        hub_scores = rerank(url, "bert-rerank")
        assert np.abs(hub_scores - rerank(url, "local-rerank")).max() < 1e-6
    reference = sigmoid(hf_logits(bert_rerank_dir.hf_dir, [(QUERY, d) for d in DOCUMENTS])[:, 0])
    assert np.abs(hub_scores - reference).max() < 1e-4
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(
        f"trt-async serve: {TINY_REPO} at commit {first_commit[:12]} has no ONNX graph "
        "(onnx/model.onnx): downloading its weights"
    ), lines[0]
    assert "exporting them with torch, once (a minute or more)" in lines[0]
    assert any("[export" in line and "verified" in line for line in lines)

    # A new commit on main is noticed: exported again, into a folder of its own.
    retrained = write_bert_classifier(tmp_path / "retrained", seed=1)
    second_commit = mirror.commit(_repo(mirror, TINY_REPO), hf_folder(retrained))
    new_folder, said = pull(env, TINY_REPO)
    assert f"at commit {second_commit[:12]} has no ONNX graph" in said
    pairs = [(QUERY, d) for d in DOCUMENTS]
    assert np.abs(_onnx_logits(new_folder, pairs) - hf_logits(retrained, pairs)).max() < 1e-4
    # The first commit, pinned, is still served from its export: nothing is exported again.
    old_folder, said = pull(env, f"{TINY_REPO}@{first_commit}")
    assert old_folder != new_folder and "exported in" in said and "[export" not in said
    assert json.loads((old_folder / "trt_async_hub.json").read_text())["commit"] == first_commit


def _onnx_logits(folder: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    rows = []
    for first, second in pairs:
        enc = tokenizer.encode(first, second)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        rows.append(session.run(None, {k: v for k, v in feeds.items() if k in names})[0][0])
    return np.array(rows, dtype=np.float64)


@pytest.mark.slow
@pytest.mark.integration
def test_a_restart_without_network_serves_from_the_caches(
    mirror: HubMirror, tmp_path: Path
) -> None:
    env = hub_env(mirror.url, tmp_path)
    onnx_folder, _ = pull(env, ST_REPO)
    exported_folder, _ = pull(env, TINY_REPO)
    mirror.take_requests()
    # The hub cannot be reached at all: the same folders, from the caches.
    dead = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    assert pull(dead, ST_REPO)[0] == onnx_folder
    assert pull(dead, TINY_REPO)[0] == exported_folder
    # HF_HUB_OFFLINE: a whole start, and not one request to the hub.
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    args = ["--model", ST_REPO, "--model", TINY_REPO]
    with serving(offline, args, tmp_path / "serve.log") as (url, _):
        assert embed(url, "all-MiniLM-L6-v2", TEXTS).shape == (len(TEXTS), 384)
        assert rerank(url, "bert-rerank").shape == (len(DOCUMENTS),)
    assert mirror.take_requests() == []


@pytest.mark.slow
def test_the_mirror_runs_a_command_against_all_minilm(capfd: pytest.CaptureFixture[str]) -> None:
    """``python -m tests.hub_mirror -- COMMAND``, the hub of perf/hub_start.py: the command
    finds both repositories at ``HF_ENDPOINT`` (one with the graph, one without), and its
    exit status is the launcher's."""
    from tests import hub_mirror

    script = (
        "import os, sys\n"
        "import huggingface_hub\n"
        "api = huggingface_hub.HfApi(endpoint=os.environ['HF_ENDPOINT'])\n"
        "for repo in sys.argv[1:]:\n"
        "    print(repo, ' '.join(sorted(api.list_repo_files(repo))))\n"
        "sys.exit(7)\n"
    )
    repos = [hub_mirror.MINILM_WITH_ONNX, hub_mirror.MINILM_WITHOUT_ONNX]
    assert hub_mirror.main(["--", sys.executable, "-c", script, *repos]) == 7
    with_graph, without = (line.split() for line in capfd.readouterr().out.splitlines())
    assert with_graph[0] == repos[0] and {"onnx/model.onnx", "model.safetensors"} <= {*with_graph}
    assert without[0] == repos[1] and "model.safetensors" in without
    assert "onnx/model.onnx" not in without
