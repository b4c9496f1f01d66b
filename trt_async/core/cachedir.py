"""The server's own cache folder: exports of the embedded default and of hub models.

``$TRT_ASYNC_CACHE``, else ``~/.cache/trt_async``. Folders in it are written to a temporary
name and renamed into place, under a lock file, so that a start killed midway leaves no half
folder and two processes starting at once do the work once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

#: Environment variable naming the cache folder.
CACHE_ENV = "TRT_ASYNC_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trt_async"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (POSIX ``flock``; elsewhere the rename race alone)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
