"""The registry keeps loaded models out of the garbage collector's full passes, and still
frees a model that sits in a reference cycle once it is unloaded."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from trt_async.core.config import Config, ModelConfig, ModelKind
from trt_async.core.registry import YOUNG_GC_THRESHOLD, ModelRegistry


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Leave the process's collector as the test found it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def tracked(obj: object) -> bool:
    """Whether a collection would walk ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


async def test_started_models_are_frozen_and_an_unloaded_cycle_is_freed(
    minilm_model_dir: Path, unfrozen: None
) -> None:
    config = Config(embedding_models={"m": ModelConfig(model_path=str(minilm_model_dir))})
    registry = ModelRegistry(config)
    await registry.start()
    runtime = registry.get("m").runtime
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD
    assert not tracked(runtime), "a full collection would walk the loaded model"

    # A cycle through the runtime: only the collector can free it, and a frozen object is
    # never collected, so unloading must hand it back first.
    runtime.cycle = [runtime]  # type: ignore[attr-defined]
    gone = weakref.ref(runtime)
    del runtime
    await registry.unload("m")
    assert gone() is None, "an unloaded model in a reference cycle stayed in memory"

    model = await registry.load("again", ModelKind.EMBEDDING, config.embedding_models["m"])
    assert not tracked(model.runtime), "a model loaded at run time is frozen too"
    await registry.close()
    assert tracked(model.runtime), "closing hands every object back to the collector"
