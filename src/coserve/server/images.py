"""Images and raw tensors -> the float32 [C, H, W] tensors experts take.

PNG and JPEG only, decoded with Pillow to RGB in [0, 1]. The size is checked against the
routed expert by the engine (`Engine.validate`), which names the expected shape; here
only what no expert could take is refused (an image too big to decode safely)."""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from coserve.server.errors import InvalidInputError, UnsupportedMediaTypeError

FORMATS = {"png": "PNG", "jpeg": "JPEG"}  # request name -> Pillow's format name
MAX_IMAGE_PIXELS = 4096 * 4096  # decoding more could take seconds and gigabytes
MAX_TENSOR_ITEMS = 3 * 4096 * 4096


def decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{where} is not valid base64 (standard alphabet, padded)") from None


def decode_image(data: bytes, where: str, expect: str | None = None) -> torch.Tensor:
    """PNG or JPEG bytes -> float32 [3, H, W] in [0, 1]. `expect`: 'png' or 'jpeg' when the
    request said which; another format is refused (415), like a format we do not take."""
    image = _open(data, where)
    fmt = image.format or "unknown"
    allowed = [FORMATS[expect]] if expect else list(FORMATS.values())
    if fmt not in allowed:
        raise UnsupportedMediaTypeError(
            f"{where} is a {fmt} image; send {' or '.join(allowed)}")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"{where} is {width}x{height} pixels, more than the "
                                f"{MAX_IMAGE_PIXELS} this server decodes; send component crops")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3], writable
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError(f"{where}: the {fmt} image is corrupt or truncated ({exc})") from None
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


def _open(data: bytes, where: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedMediaTypeError(f"{where} is not an image this server reads; send PNG "
                                        f"or JPEG") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"{where}: the image header is corrupt ({exc})") from None
