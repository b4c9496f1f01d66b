"""Image inputs: base64, data: URIs, and URLs fetched from a local HTTP server.

The server is a threaded ``http.server`` on 127.0.0.1. Loopback is not a public address,
so the default policy refuses it (tested); fetches that must succeed pass a policy that
also allows loopback, the test-only allowance :class:`ImageFetcher` takes. Names other
than the server's address go through a resolver the test supplies.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from tests.image_models import png_header_only
from trt_async.backends.modelfiles import ImagePreprocessing
from trt_async.core.config import ImageUrlConfig
from trt_async.core.errors import (
    ImageFetchFailed,
    ImageTooLarge,
    ImageUrlRefused,
    InvalidImage,
    Part,
)
from trt_async.core.image_inputs import (
    ImageFetcher,
    IPAddress,
    host_allowed,
    is_public_address,
    load_images,
)
from trt_async.core.images import ImagePreprocessor


def _png(width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(width * height)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
OTHER_PNG = _png(20, 20)


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[Counter[str]] = Counter()

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str | None, **headers: str) -> None:
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        self.hits[path] += 1
        port = self.server.server_address[1]
        if path == "/cat.png":
            self._send(200, PNG, "image/png")
        elif path == "/other.png":
            self._send(200, OTHER_PNG, "image/png; charset=binary")
        elif path == "/page":
            self._send(200, b"<html>no</html>", "text/html")
        elif path == "/no-type":
            self._send(200, PNG, None)
        elif path == "/missing":
            self._send(404, b"not found", "text/plain")
        elif path == "/big":
            self._send(200, bytes(5000), "image/png")
        elif path == "/big-unsized":
            # No Content-Length: the cap must hold while reading.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(bytes(200))
            self.close_connection = True
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG[:10])
            self.wfile.flush()
            time.sleep(3)
        elif path == "/truncated.png":
            self._send(200, PNG[: len(PNG) // 2], "image/png")
        elif path == "/bomb.png":
            self._send(200, png_header_only(20_000, 20_000), "image/png")
        elif path == "/to-cat":
            self._send(302, b"", "text/plain", Location="/cat.png")
        elif path == "/to-private":
            self._send(302, b"", "text/plain", Location=f"http://10.1.2.3:{port}/cat.png")
        elif path == "/to-metadata":
            self._send(302, b"", "text/plain", Location="http://169.254.169.254/latest/meta-data")
        elif path == "/to-name":
            self._send(302, b"", "text/plain", Location=f"http://private.test:{port}/cat.png")
        elif path == "/to-other-host":
            self._send(302, b"", "text/plain", Location=f"http://localhost:{port}/cat.png")
        elif path.startswith("/hop/"):
            n = int(path.rsplit("/", 1)[1])
            target = "/cat.png" if n == 0 else f"/hop/{n - 1}"
            self._send(302, b"", "text/plain", Location=target)
        else:
            self._send(404, b"", "text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def loopback_too(ip: IPAddress) -> bool:
    """Test-only policy: public addresses, and loopback (where the test server listens)."""
    return ip.is_loopback or is_public_address(ip)


def _config(**over: Any) -> ImageUrlConfig:
    base: dict[str, Any] = {"enabled": True, "allow_hosts": ["127.0.0.1"], "timeout_s": 2.0}
    return ImageUrlConfig(**{**base, **over})


async def _resolve_test_names(host: str, port: int) -> list[IPAddress]:
    names = {
        "images.test": ["127.0.0.1"],
        "private.test": ["10.9.8.7"],
        "mixed.test": ["8.8.8.8", "192.168.1.20"],
        "mapped.test": ["::ffff:127.0.0.1"],
        "metadata.test": ["fd00:ec2::254"],
        "localhost": ["127.0.0.1"],
        "127.0.0.1": ["127.0.0.1"],
    }
    if host not in names:
        raise OSError(f"no such name {host}")
    return [ipaddress.ip_address(a) for a in names[host]]


def _fetcher(config: ImageUrlConfig | None = None, **kwargs: Any) -> ImageFetcher:
    kwargs.setdefault("policy", loopback_too)
    kwargs.setdefault("resolve", _resolve_test_names)
    return ImageFetcher(config or _config(), **kwargs)


# --- what is public ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # cloud metadata
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("fe80::1", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("0.0.0.0", False),
        ("240.0.0.1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_host_patterns() -> None:
    assert host_allowed("images.example.com", ["images.example.com"])
    assert host_allowed("a.cdn.example.net", ["*.example.net"])
    assert not host_allowed("example.net", ["*.example.net"])
    assert not host_allowed("evil-example.net", ["*.example.net"])
    assert not host_allowed("images.example.com.evil.org", ["images.example.com"])
    assert host_allowed("anything.org", ["*"])
    assert host_allowed("::1", ["[::1]"])


# --- fetching ------------------------------------------------------------------------------


async def test_fetch_with_the_allowlist_and_dedupe(server: str) -> None:
    _Handler.hits.clear()
    async with _fetcher() as fetcher:
        refs = [f"{server}/cat.png", f"{server}/other.png", f"{server}/cat.png", f"{server}/to-cat"]
        got = await load_images(refs, fetcher)
    assert got == [PNG, OTHER_PNG, PNG, PNG]
    assert _Handler.hits["/cat.png"] == 2  # once itself, once at the end of /to-cat
    assert _Handler.hits["/other.png"] == 1


async def test_the_connection_goes_to_the_checked_address(server: str) -> None:
    """images.test exists only in the test's resolver: the fetch works only if the socket
    is opened to the address the check saw, with no second lookup."""
    port = server.rsplit(":", 1)[1]
    calls: list[str] = []

    async def resolve(host: str, p: int) -> list[IPAddress]:
        calls.append(host)
        return await _resolve_test_names(host, p)

    async with _fetcher(_config(allow_hosts=["images.test"]), resolve=resolve) as fetcher:
        assert await fetcher.fetch(f"http://images.test:{port}/cat.png", 0) == PNG
    assert calls == ["images.test"]


async def test_off_by_default_and_loopback_refused(server: str) -> None:
    _Handler.hits.clear()
    url = f"{server}/cat.png"
    async with ImageFetcher(ImageUrlConfig()) as off:
        with pytest.raises(ImageUrlRefused, match=r"image\[0\] is a URL, and this server does not"):
            await load_images([url], off)
    with pytest.raises(ImageUrlRefused, match="does not fetch image URLs"):
        await load_images([PNG_B64, url], None)
    # Enabled, host allowed, but the default policy: loopback is not public.
    async with ImageFetcher(_config()) as strict:
        with pytest.raises(ImageUrlRefused) as caught:
            await strict.fetch(url, 3)
    assert caught.value.index == 3 and "loopback address" in caught.value.message
    assert _Handler.hits["/cat.png"] == 0  # nothing ever reached the server


@pytest.mark.parametrize(
    ("path", "error", "words", "allow"),
    [
        ("/to-private", ImageUrlRefused, "10.1.2.3 is a private address", ["*"]),
        ("/to-metadata", ImageUrlRefused, "cloud metadata address", ["*"]),
        ("/to-name", ImageUrlRefused, "'private.test' resolves to 10.9.8.7", ["*"]),
        ("/to-other-host", ImageUrlRefused, "'localhost', which is not in", ["127.0.0.1"]),
        ("/hop/5", ImageFetchFailed, "redirects more than 3 times", ["127.0.0.1"]),
        ("/page", ImageFetchFailed, "is text/html, not an image", ["127.0.0.1"]),
        ("/no-type", ImageFetchFailed, "of no declared type, not an image", ["127.0.0.1"]),
        ("/missing", ImageFetchFailed, "answered HTTP 404", ["127.0.0.1"]),
        ("/big", ImageTooLarge, "5000 bytes, more than the 4500 allowed", ["127.0.0.1"]),
        ("/big-unsized", ImageTooLarge, "more than the 4500 bytes allowed", ["127.0.0.1"]),
        ("/slow", ImageFetchFailed, "did not arrive within 0.5 s", ["127.0.0.1"]),
    ],
)
async def test_refusals(
    server: str, path: str, error: type[Exception], words: str, allow: list[str]
) -> None:
    assert len(PNG) < 4500
    config = _config(allow_hosts=allow, max_bytes=4500, timeout_s=0.5)
    started = time.perf_counter()
    async with _fetcher(config) as fetcher:
        with pytest.raises(error) as caught:
            await load_images([PNG_B64, f"{server}{path}"], fetcher)
    assert words in str(caught.value), str(caught.value)
    assert str(caught.value).startswith("image[1] ")
    assert time.perf_counter() - started < 2.5  # the slow server is cut off at 0.5 s


async def test_names_resolving_to_forbidden_addresses(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    config = _config(allow_hosts=["*"])
    async with _fetcher(config) as fetcher:
        for host, words in [
            ("mixed.test", "192.168.1.20, which is a private address"),
            ("metadata.test", "cloud metadata address"),
            # Loopback hidden in IPv6: the test policy allows loopback, but only as itself.
            ("mapped.test", r"loopback address \(127.0.0.1 inside IPv6\)"),
        ]:
            with pytest.raises(ImageUrlRefused, match=words):
                await fetcher.fetch(f"http://{host}:{port}/cat.png", 0)
        with pytest.raises(ImageFetchFailed, match="does not resolve"):
            await fetcher.fetch(f"http://nowhere.test:{port}/cat.png", 0)


async def test_fetched_bad_images_fail_at_decoding(server: str) -> None:
    spec = ImagePreprocessing(height=8, width=8, resize_height=8, resize_width=8)
    async with _fetcher() as fetcher:
        images = await load_images(
            [f"{server}/cat.png", f"{server}/truncated.png", f"{server}/bomb.png"], fetcher
        )
    preprocessor = ImagePreprocessor(spec)
    assert preprocessor.pixels(images[:1]).shape == (1, 3, 8, 8)
    with pytest.raises(InvalidImage, match=r"image\[1\] is truncated"):
        preprocessor.pixels(images)
    with pytest.raises(ImageTooLarge, match=r"image\[2\] is a decompression bomb"):
        preprocessor.pixels(images[:1] + images[2:], indices=[0, 2])


async def test_urls_with_credentials_or_other_schemes(server: str) -> None:
    async with _fetcher() as fetcher:
        with pytest.raises(ImageUrlRefused, match="credentials"):
            await fetcher.fetch(server.replace("http://", "http://user:pw@") + "/cat.png", 0)
        with pytest.raises(InvalidImage, match="is a file: URL"):
            await load_images(["file:///etc/passwd"], fetcher)
        with pytest.raises(InvalidImage, match="is a ftp: URL"):
            await load_images(["ftp://127.0.0.1/cat.png"], fetcher)


# --- inline images -------------------------------------------------------------------------

PNG_B64 = base64.b64encode(PNG).decode()


async def test_inline_images() -> None:
    urlsafe = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    wrapped = "\n".join(PNG_B64[i : i + 76] for i in range(0, len(PNG_B64), 76))
    refs = [
        PNG_B64,
        f"data:image/png;base64,{PNG_B64}",
        f"DATA:Image/PNG;BASE64,{PNG_B64}",
        urlsafe,
        wrapped,
        "data:image/png," + "".join(f"%{b:02x}" for b in PNG),
        f"data:;base64,{PNG_B64}",
    ]
    assert await load_images(refs, None) == [PNG] * len(refs)


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("", "is an empty string"),
        ("not base64 at all!", "neither an http(s) URL, a data: URI nor valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "is a data: URI of text/plain, not an image"),
        ("data:image/png;base64", "without a ','"),
        ("data:image/png;base64,@@@", "valid base64"),
    ],
)
async def test_bad_inline_images(ref: str, words: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        await load_images([PNG_B64, ref], None, indices=[4, 9], part=Part.INPUTS)
    assert caught.value.index == 9
    assert words in caught.value.message and caught.value.message.startswith("input[9] ")
