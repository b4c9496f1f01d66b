"""The seams between layers: config keys for shared runtimes, health read from the runtime,
and the one table from core errors to HTTP."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from trt_async.core import errors
from trt_async.core.config import ModelConfig, ModelKind
from trt_async.core.errors import Part
from trt_async.core.runtime import ModelRuntime
from trt_async.core.tasks import ModelState, ServedModel
from trt_async.http.errors import CORE_ERRORS, core_error_mapping


def test_names_differing_only_in_per_name_options_share_a_runtime() -> None:
    base = ModelConfig(model_path="/m")
    same = ModelConfig(
        model_path="/m",
        model_name="x",
        normalize=False,
        score_activation="none",
        truncate=False,
        prompts={"query": "query: "},
        default_prompt_name="query",
        instruction="Find the answer",
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
    # What the capabilities are built from: an embedder's graph, no heads, no labels.
    runtime.io = cast(Any, SimpleNamespace(output="last_hidden_state"))
    runtime.task = None
    runtime.head_reducers = {}
    runtime.labels = {}
    runtime.files = cast(Any, SimpleNamespace(manifest=None))  # no prompts, no template
    runtime.tokenizer = cast(Any, None)
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


def _tagged(part: Part) -> str:
    return f"<{part.name}>"


def test_core_errors_name_whole_parts_through_the_namer() -> None:
    """A core message names a part only through the namer it is described with, so the HTTP
    layer words it with each API's field (``inputs``, ``texts``, ``output_dimension``)."""
    cases = [
        (errors.EmptyInput(Part.DOCUMENTS), "<DOCUMENTS> is empty; send at least one document"),
        (errors.EmptyInput(Part.QUERY), "<QUERY> is an empty string"),
        (
            errors.EmptyInput(Part.DOCUMENTS, 3),
            "<DOCUMENTS>[3] is an empty string; send non-empty text",
        ),
        (
            errors.InputTooLong(2, 600, 512),
            "input 2 must have less than 513 tokens. Given: 600. Shorten it or send <TRUNCATION>.",
        ),
        (
            errors.DimensionsOutOfRange("m", 999, 384),
            "<DIMENSIONS> must be between 1 and 384 for model 'm'; got 999",
        ),
    ]
    for exc, expected in cases:
        assert exc.describe(_tagged) == expected
        assert str(exc) == exc.describe(errors.core_name)
    assert errors.InvalidTemplate("x").describe(_tagged).startswith("<TEMPLATE> must contain {}")
    assert errors.EmptyInput(Part.TEXTS, field="texts").describe(_tagged) == (
        "texts is empty; send at least one text"
    )


def test_core_and_backends_give_no_api_field_names() -> None:
    """Only the HTTP layer gives an error an API's own ``field`` (or the old ``param``)."""
    package = Path(errors.__file__).parents[1]
    offenders = []
    for path in [*(package / "core").rglob("*.py"), *(package / "backends").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    value = keyword.value
                    passed_on = isinstance(value, ast.Name) and value.id == keyword.arg
                    if keyword.arg in ("field", "param") and not passed_on:
                        offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []


def _private(name: str) -> bool:
    """A leading underscore, not a dunder (``__version__``, ``__main__`` are public)."""
    return name.startswith("_") and not name.endswith("__")


def outside_public_api(source: str) -> list[str]:
    """What a script takes from outside the package's public API, by line: any import of
    ``tests`` (statements, or a literal handed to an import function), and names with a
    leading underscore taken from ``trt_async``: imported, or read as an attribute of a name
    imported from it. Attributes of objects made at run time cannot be traced here."""
    found: list[str] = []
    from_package: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                root, *parts = alias.name.split(".")
                if root == "tests":
                    found.append(f"{where}: import {alias.name}")
                elif root == "trt_async":
                    from_package.add(alias.asname or root)
                    if any(_private(p) for p in parts):
                        found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root, *parts = node.module.split(".")
            names = [alias.name for alias in node.names]
            if root == "tests":
                found.append(f"{where}: from {node.module} import {', '.join(names)}")
            elif root == "trt_async":
                from_package.update(alias.asname or alias.name for alias in node.names)
                private = [n for n in names if _private(n)]
                if any(_private(p) for p in parts) or private:
                    found.append(f"{where}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                called in ("import_module", "__import__", "resolve_name")
                and isinstance(first, ast.Constant)
                and str(first.value).split(".")[0].split(":")[0] == "tests"
            ):
                found.append(f"{where}: {called}({first.value!r})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in from_package:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_public_api_check_finds_each_kind_of_use() -> None:
    source = """\
import tests.models
from tests.fake_trt import FakeCudaRuntime
from trt_async.tools.embedded import _complete
from trt_async.backends._private import thing
import trt_async.core._hidden as hidden
from trt_async import backends
from trt_async.tools.embedded import package_model_dir
import importlib
backends._REGISTRY["tensorrt"] = None
package_model_dir._cache
importlib.import_module("tests.hub_mirror")
"""
    assert set(outside_public_api(source)) == {
        "line 1: import tests.models",
        "line 2: from tests.fake_trt import FakeCudaRuntime",
        "line 3: from trt_async.tools.embedded import _complete",
        "line 4: from trt_async.backends._private import thing",
        "line 5: import trt_async.core._hidden",
        "line 9: backends._REGISTRY",
        "line 10: package_model_dir._cache",
        "line 11: import_module('tests.hub_mirror')",
    }
    fine = """
import trt_async
from trt_async import __version__
from trt_async.tools.tiny_models import corpus
from perf.core_vs_session import compare
from .minimal_app import app
self._private = trt_async.backends.create_backend
"""
    assert outside_public_api(fine) == []


def test_perf_scripts_use_only_the_public_api() -> None:
    """The benchmark scripts run against the package as installed: nothing from the tests,
    no private names. A script that needs a test's stand-in takes it as an argument (as
    ``gpu_model.py --fake MODULE:NAME`` does); commands in its docs import no tests either."""
    perf = Path(__file__).resolve().parents[1] / "perf"
    offenders = {
        path.name: found
        for path in sorted(perf.glob("*.py"))
        if (found := outside_public_api(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
    for doc in sorted(perf.glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        assert not re.search(r"\b(from|import)\s+tests\b", text), doc.name
