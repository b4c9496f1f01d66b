"""Local image servers for the HTTP tests: plain HTTP with the hostile paths of
``tests/test_image_inputs.py``, and HTTPS as ``example.com`` for the seed's own example.

No network is reachable, so the server's fetcher is given what reaches them: a resolver
that maps the test names to loopback, a policy that lets loopback through (the default
policy refuses it, as tested), the test CA, and a network backend that opens connections
for port 443 on the local HTTPS server's port instead. Every other check of the fetcher
(allowlist, redirects, byte and time caps, content type) runs unchanged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpcore

from tests.test_image_inputs import _Handler, loopback_too
from trt_async.core.config import ImageUrlConfig
from trt_async.core.image_inputs import ImageFetcher, IPAddress


class SeedImages(_Handler):
    """The hostile paths, and the images the seed's example names."""

    images: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        found = self.images.get(self.path)
        if found is not None:
            self._send(200, found, "image/jpeg")
        else:
            super().do_GET()


@contextlib.contextmanager
def image_server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A threaded server of :class:`SeedImages` on 127.0.0.1 (HTTPS with ``tls``); its port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SeedImages)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_certificate(
    folder: Path, host: str = "example.com"
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for ``host``: (the server's context, a client context that
    trusts it). Made with the openssl command; the caller skips without one."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={host}",
            "-addext", f"subjectAltName=DNS:{host}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


class ToLocalPorts(httpcore.AsyncNetworkBackend):
    """Opens the fetcher's (already checked) connections on other local ports: a URL's
    port 443 reaches the test's HTTPS server."""

    def __init__(self, ports: Mapping[int, int]) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._ports = dict(ports)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_tcp(
            host,
            self._ports.get(port, port),
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OSError("no unix sockets in these tests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_NAMES = {
    "example.com": ["127.0.0.1"],
    "127.0.0.1": ["127.0.0.1"],
    "private.test": ["10.9.8.7"],
}


async def resolve_test_names(host: str, port: int) -> list[IPAddress]:
    if host not in _NAMES:
        raise OSError(f"no such name {host}")
    return [ipaddress.ip_address(a) for a in _NAMES[host]]


def local_fetcher(
    config: ImageUrlConfig, client_tls: ssl.SSLContext | None, https_port: int | None
) -> ImageFetcher:
    """The fetcher a test server gets: loopback allowed, the test names, the test CA."""
    return ImageFetcher(
        config,
        policy=loopback_too,
        resolve=resolve_test_names,
        ssl_context=client_tls,
        network=ToLocalPorts({443: https_port} if https_port else {}),
    )
