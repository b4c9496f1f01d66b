"""The seams between layers: config keys for shared runtimes, health read from the runtime,
and the one table from core errors to HTTP."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any, cast

from trt_async.core import errors
from trt_async.core.config import ModelConfig, ModelKind
from trt_async.core.runtime import ModelRuntime
from trt_async.core.tasks import ModelState, ServedModel
from trt_async.http.errors import CORE_ERRORS, core_error_mapping


def test_names_differing_only_in_per_name_options_share_a_runtime() -> None:
    base = ModelConfig(model_path="/m")
    same = ModelConfig(
        model_path="/m", model_name="x", normalize=False, score_activation="none", truncate=False
    )
    assert base.runtime_key() == same.runtime_key()
    for changed in (
        ModelConfig(model_path="/other"),
        ModelConfig(model_path="/m", max_length=64),
        ModelConfig(model_path="/m", labels={0: "a"}),
        ModelConfig(model_path="/m", precision="fp32"),
        ModelConfig(model_path="/m", max_queue_delay_ms=1),
    ):
        assert changed.runtime_key() != base.runtime_key()


def _model(failures: int) -> ServedModel:
    stats = SimpleNamespace(consecutive_failures=failures)
    runtime = ModelRuntime.__new__(ModelRuntime)
    runtime.scheduler = cast(Any, SimpleNamespace(stats=stats))
    config = ModelConfig(model_path="/m")
    return ServedModel("m", ModelKind.EMBEDDING, config, runtime, unhealthy_after=3)


def test_health_is_read_from_the_failure_streak_and_reading_changes_nothing() -> None:
    model = _model(failures=2)
    model.state = ModelState.READY
    assert model.state is ModelState.READY and model.reason is None
    model.runtime.scheduler.stats.consecutive_failures = 3
    for _ in range(2):  # reading twice gives the same answer
        assert model.state is ModelState.UNHEALTHY
        assert model.reason == "3 consecutive batches failed; see the server log"
    model.runtime.scheduler.stats.consecutive_failures = 0  # a batch succeeded
    assert model.state is ModelState.READY and model.reason is None
    # A draining model stays draining whatever its batches do.
    model.runtime.scheduler.stats.consecutive_failures = 5
    model.state = ModelState.DRAINING
    assert model.state is ModelState.DRAINING and model.reason is None


def test_every_core_error_has_its_own_row_and_carries_no_http() -> None:
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.ServingError)
    ]
    assert set(classes) == set(CORE_ERRORS)
    for cls in classes:
        assert not hasattr(cls, "status") and not hasattr(cls, "kind")
    assert core_error_mapping(errors.EmptyInput("e")).status == 400
    assert core_error_mapping(errors.Overloaded("o")).status == 429
    assert core_error_mapping(errors.BackendFailure("id")).kind == "Backend"
