"""``trt-async serve`` refuses to start with one line that names the file, the model and
the fix, exit code 2, before any port is bound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trt_async.cli import main

REPO = Path(__file__).resolve().parents[1]


def serve(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``trt-async serve`` in-process; return its one stderr line (it must fail)."""
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trt-async serve: ")
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    yield port


@pytest.fixture(autouse=True)
def _keep_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # run_serve exports the config path for the worker; keep it out of other tests.
    monkeypatch.delenv("TRT_ASYNC_CONFIG", raising=False)


def test_missing_model_folder_names_file_model_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_port: int
) -> None:
    config = write(tmp_path, "embedding_models:\n  my-embedder:\n    model_path: ./nowhere\n")
    line = serve(capsys, "--config", str(config), "--port", str(free_port))
    assert str(config) in line
    assert "model 'my-embedder' (embedding_models)" in line
    assert str(tmp_path / "nowhere") in line and "no such model file or folder" in line


def test_bare_hub_id_says_how_to_download_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_port: int
) -> None:
    config = write(tmp_path, "reranking_models:\n  bge:\n    model_path: BAAI/bge-reranker-base\n")
    line = serve(capsys, "--config", str(config), "--port", str(free_port))
    assert "model 'bge' (reranking_models)" in line
    assert "'BAAI/bge-reranker-base' looks like a Hugging Face repo id" in line
    assert "model_path: hf://BAAI/bge-reranker-base" in line
    assert "trt-async serve --model BAAI/bge-reranker-base --task rerank" in line


def test_unexported_hugging_face_folder_says_to_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_port: int
) -> None:
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    config = write(tmp_path, f"nli_models:\n  xnli:\n    model_path: {hf}\n")
    line = serve(capsys, "--config", str(config), "--port", str(free_port))
    assert "model 'xnli' (nli_models)" in line
    assert "it holds Hugging Face weights: run `trt-async export" in line


def test_missing_tokenizer_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_port: int
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"")
    config = write(tmp_path, f"embedding_models:\n  e:\n    model_path: {model}\n")
    line = serve(capsys, "--config", str(config), "--port", str(free_port))
    assert f"{model / 'tokenizer.json'}: missing" in line


def test_bad_enum_lists_the_allowed_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "embedding_models:\n  e:\n    model_path: x\n    pooling: avg\n")
    line = serve(capsys, "--config", str(config))
    assert f"{config}: at embedding_models.e.pooling: Invalid enum value 'avg'" in line
    assert line.endswith("allowed values: cls, last, mean, none")
    config = write(tmp_path, "server:\n  log_format: yaml\n")
    assert serve(capsys, "--config", str(config)).endswith("allowed values: json, text")


def test_yaml_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "server:\n  port: 8887\n   host: x\n")
    line = serve(capsys, "--config", str(config))
    assert f"{config}, line 3, column 8: not valid YAML" in line
    assert "<unicode string>" not in line


def test_unknown_key_suggests_the_known_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "embedding_models:\n  e:\n    model_path: x\n    max_lenght: 128\n")
    line = serve(capsys, "--config", str(config))
    assert "at embedding_models.e: Object contains unknown field `max_lenght`" in line
    assert line.endswith("did you mean `max_length`?")
    config = write(tmp_path, "embeding_models: {}\n")
    assert serve(capsys, "--config", str(config)).endswith("did you mean `embedding_models`?")


def test_port_in_use_is_refused(capsys: pytest.CaptureFixture[str], free_port: int) -> None:
    with socket.socket() as busy:
        # As granian binds: SO_REUSEPORT, which would let a second server share the port.
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", free_port))
        busy.listen()
        line = serve(capsys, "--host", "127.0.0.1", "--port", str(free_port))
    assert f"port {free_port} on 127.0.0.1 is already in use" in line


def test_the_command_exits_2_with_one_line_before_binding(tmp_path: Path, free_port: int) -> None:
    config = write(tmp_path, "embedding_models:\n  e:\n    model_path: BAAI/bge-m3\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TRT_ASYNC_CONFIG", None)
    command = [sys.executable, "-m", "trt_async", "serve", "--config", str(config)]
    done = subprocess.run(
        [*command, "--host", "127.0.0.1", "--port", str(free_port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "model_path: hf://BAAI/bge-m3" in done.stderr and str(config) in done.stderr
    assert "Listening" not in done.stdout + done.stderr
