"""Images and raw tensors -> the float32 [C, H, W] tensors experts take.

PNG and JPEG only, decoded with Pillow to RGB in [0, 1], in two steps so nothing is
decoded that will be refused: `open_image` reads the header alone (Pillow is given only
the PNG and JPEG parsers, so untrusted bytes never reach the others) and gives the size
the image would decode to; the service checks it against the routed expert and against
the decode budget; only then `decode_image` decodes the pixels."""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from coserve.server.errors import InvalidInputError, UnsupportedMediaTypeError

FORMATS = {"png": "PNG", "jpeg": "JPEG"}  # request name -> Pillow's format name
MAX_IMAGE_PIXELS = 4096 * 4096  # decoding more could take seconds and gigabytes
MAX_TENSOR_ITEMS = 3 * 4096 * 4096
# What decoding one pixel holds at its peak: Pillow's RGB(X) image (4), the uint8 array
# (3), the float32 tensor (12).
DECODE_BYTES_PER_PIXEL = 19


@dataclass(frozen=True)
class EncodedImage:
    """PNG or JPEG bytes as they arrived; `expect`: 'png' or 'jpeg' when the request said
    which."""

    data: bytes
    where: str  # how the client names it, for messages: "items[3].base64_png"
    expect: str | None = None


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header was read: its size is known, its pixels are not decoded."""

    image: Image.Image
    where: str

    @property
    def shape(self) -> tuple[int, int, int]:
        width, height = self.image.size
        return (3, height, width)  # [C, H, W] once decoded

    @property
    def decode_bytes(self) -> int:
        width, height = self.image.size
        return width * height * DECODE_BYTES_PER_PIXEL


def decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{where} is not valid base64 (standard alphabet, padded)") from None


def open_image(encoded: EncodedImage) -> OpenedImage:
    """Read the header only; refuse a format we do not take (415) and a size no expert
    could take (422)."""
    where = encoded.where
    allowed = [FORMATS[encoded.expect]] if encoded.expect else list(FORMATS.values())
    image = _open(encoded.data, where, allowed)
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"{where} is {width}x{height} pixels, more than the "
                                f"{MAX_IMAGE_PIXELS} this server decodes; send component crops "
                                f"of the size the expert takes")
    return OpenedImage(image, where)


def decode_image(opened: OpenedImage) -> torch.Tensor:
    """The pixels -> float32 [3, H, W] in [0, 1]."""
    image, where = opened.image, opened.where
    try:  # open_image refused every size Pillow would warn about
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3], writable
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"{where}: the {image.format} image is corrupt or truncated "
                                f"({exc}); send the file as it was written") from None
    finally:
        image.close()
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0).contiguous()  # [3, H, W]


def tensor_from_list(shape: Sequence[int], data: Sequence[float], where: str) -> torch.Tensor:
    """A row-major list of numbers -> float32 tensor of `shape`; finite values only."""
    num_items = math.prod(shape)
    if num_items > MAX_TENSOR_ITEMS:
        raise InvalidInputError(f"{where}.shape {list(shape)} has {num_items} items, more than "
                                f"{MAX_TENSOR_ITEMS}")
    if len(data) != num_items:
        raise InvalidInputError(f"{where}.data has {len(data)} numbers but shape {list(shape)} "
                                f"needs {num_items} (row-major)")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused below
        values = np.asarray(data, dtype=np.float32)
    if not np.isfinite(values).all():
        raise InvalidInputError(f"{where}.data holds values that are not finite float32 numbers "
                                f"(NaN, infinity, or beyond +-3.4e38)")
    return torch.from_numpy(values).reshape(tuple(shape))


def _open(data: bytes, where: str, allowed: list[str]) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=allowed)
    except UnidentifiedImageError:
        raise UnsupportedMediaTypeError(
            f"{where} is {_sniff(data)}; send {' or '.join(allowed)}") from None
    except Image.DecompressionBombError:
        raise InvalidInputError(f"{where} declares more pixels than the {MAX_IMAGE_PIXELS} this "
                                f"server decodes (a decompression bomb?); send component crops "
                                f"of the size the expert takes") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInputError(f"{where}: the image header is corrupt ({exc}); send the file "
                                f"as it was written") from None


# Magic numbers, only to name what was sent instead (never to parse it).
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"BM": "a BMP image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image",
          b"RIFF": "a RIFF (WebP?) image"}


def _sniff(data: bytes) -> str:
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return "not an image this server reads"
