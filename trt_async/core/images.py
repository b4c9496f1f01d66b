"""Encoded images to a vision tower's ``pixel_values``, with Pillow and numpy (no torch).

The steps and their arithmetic are those of transformers' PIL-backed image processors
(``CLIPImageProcessor``, ``SiglipImageProcessor``), so the same file gives the same
float32 values bit for bit: EXIF orientation applied (as transformers' ``load_image``);
conversion to RGB with transparency composited onto white (transformers' ``convert_to_rgb``;
palette, grey, CMYK and 16-bit images go through Pillow's own ``convert("RGB")``, as there);
Pillow's ``resize`` with the model's filter; a centre crop; ``float64(value) * rescale``
cast to float32; ``(x - mean) / std`` in float32. After the resize every step depends on
one uint8 value and its channel only, so those steps are a 256-entry table per channel.

Hostile files are refused before they cost anything: the pixel count is read from the
header (``Image.open`` decodes nothing) and compared with the cap before any pixel is
decoded; only common raster formats are opened (Pillow's EPS reader would run
Ghostscript); truncated or corrupt data fails the full decode and is named as such.

Everything here is synchronous and thread-safe (Pillow releases the GIL while it decodes
and resizes): callers run it off the event loop.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from trt_async.backends.modelfiles import RESAMPLE_CODES, ImagePreprocessing
from trt_async.core.config import DEFAULT_MAX_IMAGE_PIXELS
from trt_async.core.errors import ImageTooLarge, InvalidImage, InvalidInput, Part

#: Formats Pillow may open (those this Pillow build has); JPEG covers the MPO files phone
#: cameras write.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

PixelArray = npt.NDArray[np.float32]


class ImageRejected(Exception):
    """Why one image cannot be used (the caller knows its index)."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """``data`` decoded in full and turned upright by its EXIF orientation.

    Raises :class:`ImageRejected`: not an image of :data:`FORMATS`, more than
    ``max_pixels`` pixels (checked from the header, before decoding), or truncated or
    corrupt.
    """
    if not data:
        raise ImageRejected("is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError as exc:
        # Pillow's own check (its header says more than twice Image.MAX_IMAGE_PIXELS).
        raise ImageRejected(f"is a decompression bomb ({exc})", too_large=True) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            f"is not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except Exception as exc:  # a header Pillow's parsers choke on, in any of their ways
        raise ImageRejected(f"is truncated or corrupt ({_reason(exc)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(
            f"has {width} x {height} = {width * height} pixels, more than the "
            f"{max_pixels} allowed (server.max_image_pixels)",
            too_large=True,
        )
    if width == 0 or height == 0:
        raise ImageRejected(f"has no pixels ({width} x {height})")
    try:
        # Pillow does not decode truncated data unless ImageFile.LOAD_TRUNCATED_IMAGES is
        # set (it is not): load() raises and the image is refused whole.
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:
        raise ImageRejected(f"is truncated or corrupt ({_reason(exc)})") from None
    return image


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as transformers' ``convert_to_rgb``: transparency composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resized_size(width: int, height: int, spec: ImagePreprocessing) -> tuple[int, int]:
    """(width, height) after the resize, computed as transformers computes it."""
    if spec.resize_shortest_edge is not None and spec.resize_longest_edge is not None:
        return _size_with_aspect_ratio(
            width, height, spec.resize_shortest_edge, spec.resize_longest_edge
        )
    if spec.resize_shortest_edge is not None:
        # transformers' get_resize_output_image_size(default_to_square=False)
        size = spec.resize_shortest_edge
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    if spec.resize_height is not None and spec.resize_width is not None:
        return spec.resize_width, spec.resize_height
    return width, height


def _size_with_aspect_ratio(width: int, height: int, size: int, max_size: int) -> tuple[int, int]:
    """transformers' ``get_size_with_aspect_ratio`` (shortest and longest edge both set)."""
    raw_size: float | None = None
    low, high = float(min(height, width)), float(max(height, width))
    if high / low * size > max_size:
        raw_size = max_size * low / high
        size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return width, height
    if width < height:
        ow = size
        oh = int(raw_size * height / width) if raw_size is not None else int(size * height / width)
    else:
        oh = size
        ow = int(raw_size * width / height) if raw_size is not None else int(size * width / height)
    return ow, oh


def center_crop(pixels: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """transformers' ``center_crop`` of an (H, W, C) array: zero-padded where the image is
    smaller than the crop, with the same rounding of the offsets."""
    orig_h, orig_w = pixels.shape[:2]
    top = (orig_h - height) // 2
    left = (orig_w - width) // 2
    if top >= 0 and left >= 0 and top + height <= orig_h and left + width <= orig_w:
        return pixels[top : top + height, left : left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w, *pixels.shape[2:]), dtype=pixels.dtype)
    top_pad = -(-(new_h - orig_h) // 2)
    left_pad = -(-(new_w - orig_w) // 2)
    padded[top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def value_table(spec: ImagePreprocessing) -> PixelArray:
    """(3, 256) float32: what transformers' rescale and normalise make of each uint8 value
    in each channel, computed with their dtypes (float64 product, float32 after)."""
    values = np.arange(256, dtype=np.uint8)
    table = np.empty((3, 256), dtype=np.float32)
    for channel in range(3):
        x: npt.NDArray[np.float32]
        if spec.rescale_factor is not None:
            x = (values.astype(np.float64) * spec.rescale_factor).astype(np.float32)
        else:
            x = values.astype(np.float32)
        if spec.image_mean is not None and spec.image_std is not None:
            mean = np.array(spec.image_mean, dtype=np.float32)[channel]
            std = np.array(spec.image_std, dtype=np.float32)[channel]
            x = (x - mean) / std
        table[channel] = x
    return table


class ImagePreprocessor:
    """Turns encoded images into one model's ``pixel_values`` (N, 3, H, W) float32."""

    def __init__(
        self, spec: ImagePreprocessing, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self._table = value_table(spec)
        self._resample = Image.Resampling(RESAMPLE_CODES[spec.resample])

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's ``pixel_values`` shape, (3, height, width)."""
        return 3, self.spec.height, self.spec.width

    def preprocess(self, image: Image.Image, out: PixelArray) -> None:
        """Write a decoded (upright) image's values into ``out``, shaped :attr:`shape`."""
        spec = self.spec
        rgb = to_rgb(image)
        size = resized_size(*rgb.size, spec)
        if spec.resize_shortest_edge is not None or spec.resize_height is not None:
            # Pillow gives a plain copy when the size does not change, as for transformers.
            rgb = rgb.resize(size, resample=self._resample)
        pixels = np.asarray(rgb)
        if spec.crop_height is not None and spec.crop_width is not None:
            pixels = center_crop(pixels, spec.crop_height, spec.crop_width)
        if pixels.shape[:2] != (spec.height, spec.width):
            raise ImageRejected(
                f"preprocesses to {pixels.shape[1]} x {pixels.shape[0]} pixels, not the "
                f"{spec.width} x {spec.height} the model takes"
            )
        for channel in range(3):
            np.take(self._table[channel], pixels[:, :, channel], out=out[channel])

    def pixels(
        self,
        images: Sequence[bytes],
        indices: Sequence[int] | None = None,
        part: Part = Part.IMAGES,
    ) -> PixelArray:
        """``pixel_values`` of ``images``; a bad one raises :class:`InvalidImage` (or
        :class:`ImageTooLarge`) naming its index (``indices[i]`` when given: where the
        image sits in the request)."""
        out = np.empty((len(images), *self.shape), dtype=np.float32)
        for i, data in enumerate(images):
            index = indices[i] if indices is not None else i
            try:
                image = decode_image(data, self.max_pixels)
                self.preprocess(image, out[i])
            except ImageRejected as exc:
                if exc.too_large:
                    raise ImageTooLarge(index, exc.reason, part=part) from None
                raise InvalidImage(index, exc.reason, part=part) from None
        return out

    def pixels_each(
        self, requests: Sequence[Sequence[bytes]], part: Part = Part.IMAGES
    ) -> list[PixelArray | InvalidInput]:
        """:meth:`pixels` of several requests' images in one call: each request's array, or
        the error of its first bad image (the others are unaffected)."""
        out: list[PixelArray | InvalidInput] = []
        for images in requests:
            try:
                out.append(self.pixels(images, part=part))
            except InvalidInput as exc:
                out.append(exc)
        return out
