"""Quantised embeddings (Cohere's ``embedding_types``): int8, uint8, binary, ubinary.

The arithmetic is sentence-transformers' ``quantize_embeddings`` (sentence_transformers,
``util/quantization.py``), so a client comparing with it gets the same bytes:

* ``binary`` / ``ubinary``: the sign bits (``x > 0``) packed 8 per byte, most significant
  bit first (``numpy.packbits``); ``ubinary`` is the packed byte, ``binary`` the byte minus
  128 as int8. A vector of ``d`` dimensions gives ``ceil(d / 8)`` bytes.
* ``uint8`` / ``int8`` (scalar quantisation): per dimension, ``start = min`` and
  ``step = (max - min) / 255`` over a calibration set (a step of 0 counts as 1), then
  ``q = clip(floor((x - start) / step), 0, 255)``; ``uint8`` is ``q``, ``int8`` is
  ``q - 128``.

Calibration scheme: the per-dimension ranges must not depend on the request (a batch's own
minimum and maximum would make two requests' vectors incomparable), so each model is
calibrated once on :data:`CALIBRATION_TEXTS`, a fixed mixed English and Chinese set, run
through the served model itself. Its raw (unnormalised, full-dimension) vectors are kept in
``calibration.npz`` beside the model (with the graph's hash, so a re-export recalibrates);
the ranges for a request are those of the calibration vectors after the same finishing as
the request's own (Matryoshka truncation to ``output_dimension``, then normalisation), so
truncated vectors get ranges of their own.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

ScalarType = Literal["int8", "uint8"]
BinaryType = Literal["binary", "ubinary"]
CALIBRATION_FILE = "calibration.npz"


def pack_bits(vectors: np.ndarray, kind: BinaryType) -> np.ndarray:
    """Sign bits packed 8 per byte: uint8 for ``ubinary``, int8 (byte - 128) for ``binary``."""
    packed = np.packbits(vectors > 0, axis=-1)
    if kind == "ubinary":
        return packed
    return (packed.astype(np.int16) - 128).astype(np.int8)


def scalar_ranges(calibration: np.ndarray) -> np.ndarray:
    """``(2, dim)``: per-dimension minimum and maximum of the calibration vectors."""
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0))).astype(np.float32)


def quantize_scalar(vectors: np.ndarray, ranges: np.ndarray, kind: ScalarType) -> np.ndarray:
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    q = np.clip(np.floor((vectors.astype(np.float32, copy=False) - starts) / steps), 0, 255)
    out: np.ndarray = q.astype(np.uint8) if kind == "uint8" else (q - 128).astype(np.int8)
    return out


def load_calibration(root: Path, onnx_sha256: str | None, dim: int) -> np.ndarray | None:
    """The stored calibration vectors, if they belong to this graph and width."""
    path = root / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            vectors = np.asarray(data["embeddings"], dtype=np.float32)
            stored = str(data["onnx_sha256"]) if "onnx_sha256" in data else ""
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable (%s); recalibrating", path, exc)
        return None
    if vectors.ndim != 2 or vectors.shape[1] != dim or stored != (onnx_sha256 or ""):
        log.info("%s: for another graph or width; recalibrating", path)
        return None
    return vectors


def save_calibration(root: Path, onnx_sha256: str | None, vectors: np.ndarray) -> bool:
    """Store the calibration beside the model; False (and memory only) if it is read-only."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".npz", dir=root)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, embeddings=vectors.astype(np.float32), onnx_sha256=onnx_sha256 or "")
        os.replace(tmp, root / CALIBRATION_FILE)
    except OSError as exc:
        log.info("cannot store %s in %s (%s); keeping it in memory", CALIBRATION_FILE, root, exc)
        return False
    return True


_EN_SUBJECTS = (
    "The engineer",
    "A small child",
    "My neighbour",
    "The committee",
    "Every student",
    "The old fisherman",
    "Our new server",
    "The doctor",
)
_EN_PREDICATES = (
    "explained how the payment system handles refunds",
    "bought fresh vegetables at the morning market",
    "asked whether the museum is open on public holidays",
    "compared the battery life of three laptops",
    "wrote a short poem about the autumn rain",
    "fixed the memory leak in the image decoder",
    "booked a train ticket to the mountains",
    "read the contract twice before signing it",
)
_EN_TAILS = (
    ".",
    " last week.",
    ", which surprised everyone.",
    " before the deadline on Friday.",
)
_ZH = (
    "請問明天早上的航班會不會延誤？",
    "這家餐廳的牛肉麵非常有名。",
    "我們需要在月底之前完成系統升級。",
    "研究人員發現睡眠不足會影響記憶力。",
    "他每天騎腳踏車上班，大約二十分鐘。",
    "這本小說講述了一個家族三代的故事。",
    "颱風來臨前，居民提前購買了食物和水。",
    "如何在家裡種植番茄和辣椒？",
    "新的圖書館週末也開放到晚上九點。",
    "股市今天開盤後小幅上漲。",
    "醫生建議多喝水並且多休息。",
    "工程師正在測試資料庫的備份功能。",
    "孩子們在操場上玩得很開心。",
    "這款手機的相機在夜間拍攝效果很好。",
    "請把會議紀錄寄給所有參加的人。",
    "山上的空氣比城市裡清新很多。",
)
_QUESTIONS = (
    "how do I reset my password",
    "best way to learn a second language",
    "symptoms of vitamin D deficiency",
    "what is the difference between a loan and a mortgage",
    "python read a csv file",
    "weather in Paris next weekend",
    "why is the sky blue",
    "cheap flights from Tokyo to Taipei",
)

#: 256 English sentences, 16 Chinese sentences and 8 search-style queries: a fixed, mixed
#: set of lengths and styles, written for this project (see the module docstring).
CALIBRATION_TEXTS: tuple[str, ...] = (
    *(f"{s} {p}{t}" for s, p, t in itertools.product(_EN_SUBJECTS, _EN_PREDICATES, _EN_TAILS)),
    *_ZH,
    *_QUESTIONS,
)
