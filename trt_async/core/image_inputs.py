"""Images named in requests, as bytes: base64, ``data:`` URIs and, when enabled, http(s) URLs.

base64 (standard or URL-safe alphabet, padding optional) and ``data:`` URIs are always
accepted. URLs are fetched only when ``server.image_urls.enabled`` is set, and then:

* the host must match ``allow_hosts``, at the first request and at every redirect;
* the host is resolved once per connection and every address it resolves to must be
  public (no loopback, private, link-local, cloud-metadata, multicast, reserved or
  unspecified address, IPv4 ones hidden in IPv6 included); the connection is then opened
  to that checked address, so DNS cannot answer the check with one address and the
  connection with another (TLS still verifies the host name);
* at most ``max_redirects`` redirects, ``max_bytes`` bytes (the declared length is
  checked before reading, the received bytes while reading), ``timeout_s`` for the whole
  fetch and ``connect_timeout_s`` per connection; the answer must be 2xx with an
  ``image/*`` content type; no proxy from the environment is used;
* one request's URLs are fetched once each, however often they appear.

Every refusal is a core error naming the image's index: :class:`ImageUrlRefused` (the
configuration does not allow it), :class:`ImageFetchFailed` (it did not give an image),
:class:`ImageTooLarge`, :class:`InvalidImage` (not base64, a ``data:`` URI of another type).

The HTTP client is httpcore, the transport under httpx, whose network backend is the one
place that opens sockets: :class:`PinnedBackend` resolves, checks and connects there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpcore

from trt_async.core.config import ImageUrlConfig
from trt_async.core.errors import (
    ImageFetchFailed,
    ImageTooLarge,
    ImageUrlRefused,
    InvalidImage,
    Part,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Whether the server may connect to an address.
AddressPolicy = Callable[[IPAddress], bool]
#: ``resolve(host, port)``: the addresses a host name stands for.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

#: Cloud metadata services (AWS, GCP, Azure, ...; AWS's IPv6 one). Neither is public
#: anyway; named so that the refusal says what they are.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: URLs of one request fetched at once.
FETCHES_PER_REQUEST = 8
_USER_AGENT = b"trt-async image fetcher"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped ``::ffff:a.b.c.d``, 6to4, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a public unicast address (the default :data:`AddressPolicy`).

    IPv4 addresses carried in IPv6 ones (mapped ``::ffff:a.b.c.d``, 6to4, NAT64) are
    judged as the IPv4 address; Teredo and local-use NAT64 are refused outright.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None or ip in _NAT64_LOCAL:
            return False
        ip = _embedded_ipv4(ip) or ip
    if ip in METADATA_ADDRESSES:
        return False
    return ip.is_global and not ip.is_multicast


def _why_not(ip: IPAddress) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return f"{_why_not(inner)} ({inner} inside IPv6)"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for flag, words in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "the unspecified address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, flag, False):
            return words
    return "not a public address"


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host`` (TCP), in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


class AddressRefused(Exception):
    """A host that resolves to an address the policy refuses, or does not resolve."""

    def __init__(self, reason: str, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True: the policy refused an address; False: the name did not resolve.
        self.refused = refused


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to checked addresses: the host is
    resolved once, every address must pass ``policy``, and the socket is opened to one of
    those addresses (never to the name, which a second lookup could change)."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolve: Resolver,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        #: What opens the checked connections (httpcore's own, unless a test's).
        self._inner = network if network is not None else httpcore.AnyIOBackend()
        self._policy = policy
        self._resolve = resolve

    async def checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        host = host.strip("[]")
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]  # a literal: no lookup
        except ValueError:
            addresses = []
        try:
            addresses = addresses or await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"host {host!r} does not resolve ({exc})", refused=False) from None
        if not addresses:
            raise AddressRefused(f"host {host!r} does not resolve", refused=False)
        for ip in addresses:
            if not self._policy(ip):
                shown = host if host == str(ip) else f"{host!r} resolves to {ip}, which"
                raise AddressRefused(f"{shown} is {_why_not(ip)}", refused=True)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.checked_addresses(host, port)
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are never used", refused=True)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` (lower case) matches ``allow_hosts``: the same name, ``*.domain``
    for names under that domain (not the domain itself), or ``*``."""
    host = host.strip("[]")
    for pattern in patterns:
        if pattern == "*" or pattern.strip("[]") == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    host: str


class ImageFetcher:
    """Fetches image URLs under ``config``'s rules; one per server (it pools connections).

    ``policy`` decides which addresses may be connected to (default: public ones only)
    and ``resolve`` turns names into addresses (default: the system resolver); tests
    replace them to reach a local server, and may give the ``ssl_context`` that verifies
    it and the ``network`` backend that opens its (checked) connections.
    """

    def __init__(
        self,
        config: ImageUrlConfig,
        *,
        policy: AddressPolicy = is_public_address,
        resolve: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.config = config
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            network_backend=PinnedBackend(policy, resolve, network),
            max_connections=64,
            keepalive_expiry=5.0,
            retries=0,
        )

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _target(self, url: str, index: int, part: Part) -> _Target:
        """``url`` checked against the configuration, with its host IDNA-encoded."""
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            port = parts.port
        except ValueError as exc:
            raise InvalidImage(index, f"is not a valid URL ({exc})", part=part) from None
        if parts.scheme not in ("http", "https") or not host:
            raise InvalidImage(index, "is not an http(s) URL with a host name", part=part) from None
        if parts.username is not None or parts.password is not None:
            raise ImageUrlRefused(
                index, "is a URL with credentials, which are never sent", part=part
            )
        try:
            ascii_host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host
        except UnicodeError:
            raise InvalidImage(
                index, f"has a host name that is not valid: {host!r}", part=part
            ) from None
        if not host_allowed(ascii_host, self.config.allow_hosts):
            raise ImageUrlRefused(
                index,
                f"is on host {ascii_host!r}, which is not in server.image_urls.allow_hosts",
                part=part,
            )
        netloc = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        if port is not None:
            netloc += f":{port}"
        clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        return _Target(url=clean, host=ascii_host)

    async def fetch(self, url: str, index: int, part: Part = Part.IMAGES) -> bytes:
        """The bytes of the image at ``url`` (item ``index`` of ``part``)."""
        if not self.config.enabled:
            raise ImageUrlRefused(
                index,
                "is a URL, and this server does not fetch image URLs "
                "(server.image_urls.enabled is off); send the image as base64 or a data: URI",
                part=part,
            )
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await self._fetch(url, index, part)
        except TimeoutError:
            raise ImageFetchFailed(
                index,
                f"at {url[:200]} did not arrive within {self.config.timeout_s:g} s "
                "(server.image_urls.timeout_s)",
                part=part,
            ) from None

    async def _fetch(self, url: str, index: int, part: Part) -> bytes:
        config = self.config
        timeouts = {
            "connect": config.connect_timeout_s,
            "read": config.timeout_s,
            "write": config.timeout_s,
            "pool": config.timeout_s,
        }
        headers = [
            (b"Accept", b"image/*"),
            (b"Accept-Encoding", b"identity"),
            (b"User-Agent", _USER_AGENT),
        ]
        current = url
        for _ in range(config.max_redirects + 1):
            target = self._target(current, index, part)
            try:
                async with self._pool.stream(
                    "GET", target.url, headers=headers, extensions={"timeout": timeouts}
                ) as response:
                    if response.status in _REDIRECTS:
                        location = _header(response.headers, b"location")
                        if not location:
                            raise ImageFetchFailed(
                                index,
                                f"redirects ({response.status}) without a Location",
                                part=part,
                            )
                        current = urllib.parse.urljoin(target.url, location)
                        continue
                    return await self._body(response, target, index, part)
            except AddressRefused as exc:
                if exc.refused:
                    raise ImageUrlRefused(index, f"is refused: {exc.reason}", part=part) from None
                raise ImageFetchFailed(
                    index, f"could not be fetched: {exc.reason}", part=part
                ) from None
            except httpcore.TimeoutException:
                raise ImageFetchFailed(
                    index, f"timed out talking to {target.host}", part=part
                ) from None
            except (
                httpcore.NetworkError,
                httpcore.ProtocolError,
                httpcore.UnsupportedProtocol,
            ) as exc:
                raise ImageFetchFailed(
                    index,
                    f"could not be fetched from {target.host} ({exc or type(exc).__name__})",
                    part=part,
                ) from None
        raise ImageFetchFailed(
            index,
            f"redirects more than {config.max_redirects} times (server.image_urls.max_redirects)",
            part=part,
        )

    async def _body(
        self, response: httpcore.Response, target: _Target, index: int, part: Part
    ) -> bytes:
        limit = self.config.max_bytes
        if not 200 <= response.status < 300:
            raise ImageFetchFailed(
                index, f"answered HTTP {response.status} from {target.host}", part=part
            )
        content_type = (_header(response.headers, b"content-type") or "").split(";")[0].strip()
        if not content_type.lower().startswith("image/"):
            raise ImageFetchFailed(
                index,
                f"is {content_type or 'of no declared type'}, not an image "
                "(the answer's Content-Type must be image/*)",
                part=part,
            )
        declared = _header(response.headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ImageTooLarge(
                index,
                f"is {int(declared)} bytes, more than the {limit} allowed "
                "(server.image_urls.max_bytes)",
                part=part,
            )
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > limit:
                raise ImageTooLarge(
                    index,
                    f"is more than the {limit} bytes allowed (server.image_urls.max_bytes)",
                    part=part,
                )
        return bytes(body)

    async def fetch_many(
        self, urls: Sequence[tuple[int, str]], part: Part = Part.IMAGES
    ) -> dict[str, bytes]:
        """Each distinct URL of ``(index, url)`` pairs fetched once, at most
        :data:`FETCHES_PER_REQUEST` at a time; the first failure (the lowest index among
        those that failed together) is raised and the other fetches are cancelled."""
        first: dict[str, int] = {}
        for index, url in urls:
            first.setdefault(url, index)
        gate = asyncio.Semaphore(FETCHES_PER_REQUEST)

        async def one(url: str, index: int) -> bytes:
            async with gate:
                return await self.fetch(url, index, part)

        tasks = {url: asyncio.ensure_future(one(url, index)) for url, index in first.items()}
        try:
            pending: set[asyncio.Future[bytes]] = set(tasks.values())
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                errors = [e for e in (t.exception() for t in done) if e is not None]
                if errors:
                    raise min(errors, key=_error_index)
        finally:
            for task in tasks.values():
                task.cancel()
        return {url: task.result() for url, task in tasks.items()}


def _error_index(error: BaseException) -> int:
    return error.index if isinstance(error, InvalidImage) else -1


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _decode_base64(text: str, index: int, part: Part) -> bytes:
    compact = "".join(text.split())
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(
            index,
            "is neither an http(s) URL, a data: URI nor valid base64",
            part=part,
        ) from None


def _decode_data_uri(uri: str, index: int, part: Part) -> bytes:
    """RFC 2397: ``data:[<media type>][;base64],<data>``."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise InvalidImage(index, "is a data: URI without a ',' before its data", part=part)
    params = [p.strip().lower() for p in header.split(";")]
    media = params[0]
    if media and not media.startswith("image/"):
        raise InvalidImage(index, f"is a data: URI of {media}, not an image", part=part)
    if "base64" in params[1:]:
        return _decode_base64(payload, index, part)
    return urllib.parse.unquote_to_bytes(payload)


def _scheme(ref: str) -> str | None:
    head, colon, _ = ref[:32].partition(":")
    if colon and head and head[0].isalpha() and all(c.isalnum() or c in "+.-" for c in head):
        return head.lower()
    return None


async def load_images(
    refs: Sequence[str],
    fetcher: ImageFetcher | None,
    *,
    indices: Sequence[int] | None = None,
    part: Part = Part.IMAGES,
) -> list[bytes]:
    """The encoded bytes of each of ``refs`` (URL, ``data:`` URI or base64), in order.

    ``indices[i]`` is where ``refs[i]`` sits in the request (default: ``i``), for errors.
    URLs need ``fetcher`` (None: URLs are refused as when fetching is off); inline images
    are decoded first, so a malformed one fails before anything is fetched.
    """
    out: list[bytes | None] = [None] * len(refs)
    urls: list[tuple[int, str]] = []
    positions: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        index = indices[i] if indices is not None else i
        text = ref.strip()
        if not text:
            raise InvalidImage(
                index, "is an empty string; send a URL, data: URI or base64", part=part
            )
        scheme = _scheme(text)
        if scheme in ("http", "https"):
            urls.append((index, text))
            positions.setdefault(text, []).append(i)
        elif scheme == "data":
            out[i] = _decode_data_uri(text, index, part)
        elif scheme is not None:  # base64 has no ':'
            raise InvalidImage(
                index,
                f"is a {scheme}: URL; send an http(s) URL, a data: URI or base64",
                part=part,
            )
        else:
            out[i] = _decode_base64(text, index, part)
    if urls:
        if fetcher is None:
            index = urls[0][0]
            raise ImageUrlRefused(
                index,
                "is a URL, and this server does not fetch image URLs "
                "(server.image_urls.enabled is off); send the image as base64 or a data: URI",
                part=part,
            )
        fetched = await fetcher.fetch_many(urls, part)
        for url, where in positions.items():
            for i in where:
                out[i] = fetched[url]
    return [b if b is not None else b"" for b in out]
