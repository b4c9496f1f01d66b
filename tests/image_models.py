"""Image-text model folders for the tests: the builders of
:mod:`trt_async.tools.tiny_image_text` (the benchmark scripts use them too), re-exported
here, where the tests import them from, and :func:`png_header_only`."""

from __future__ import annotations

import struct
import zlib

from trt_async.tools.tiny_image_text import IMAGE_SIZE as IMAGE_SIZE
from trt_async.tools.tiny_image_text import clip_preprocessor_config as clip_preprocessor_config
from trt_async.tools.tiny_image_text import (
    siglip_preprocessor_config as siglip_preprocessor_config,
)
from trt_async.tools.tiny_image_text import write_clip as write_clip
from trt_async.tools.tiny_image_text import write_siglip as write_siglip


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with a few bytes of image
    data: what a decompression bomb's header looks like, without allocating its pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
