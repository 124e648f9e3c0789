"""A lot: the images of one directory, each with the routing field it is inspected under,
and how to read one image into the tensor the experts take.

Which component type an image is (the value of the repository's routing field, e.g.
`component_type`):

- `manifest.csv` in the directory, if present: a header row naming at least `filename`
  and the routing field (`filename,component_type[,other fields]`), one row per image.
  `filename` is relative to the directory; the other columns are passed to routing as
  request fields too (as strings). Image files in the directory that the manifest does
  not list are rejected, so none is skipped silently; listed files that are missing are
  rejected too.
- otherwise the file name: `<component_type>__<anything>.png`, e.g. `R__board7-r12.png`.

Images are PNG or JPEG (decoded with Pillow into float32 [C, H, W] in [0, 1], C = 3 as
RGB or C = 1 as grayscale) or `.safetensors` files that hold exactly one float tensor
[C, H, W], used as is. Files with other suffixes are not part of the lot (unless the
manifest lists them, which rejects them); hidden files and folders are ignored.

A symbolic link that leads outside the lot folder is never read: it is rejected with the
reason (a link to a folder is never followed; one that leads outside is rejected too, so
no file is skipped silently). Links that stay inside the folder are read as what they
point at.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coserve.errors import ConfigError, RequestError

MANIFEST_NAME = "manifest.csv"
NAME_SEPARATOR = "__"  # <component_type>__<anything>.<suffix>
PIXEL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
TENSOR_SUFFIXES = frozenset({".safetensors"})
IMAGE_SUFFIXES = PIXEL_SUFFIXES | TENSOR_SUFFIXES


class ImageError(RequestError):
    """An image cannot be read as the tensor its expert takes; the image is rejected."""


@dataclass(frozen=True)
class LotItem:
    """One image of the lot. `path` is relative to the lot directory (POSIX separators) and
    is the image's key in the results. `problem` says why it cannot be inspected at all
    (no component type, listed but missing): such an item is rejected without reading."""

    path: str
    fields: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


def discover_lot(root: Path, routing_field: str) -> list[LotItem]:
    """Every image of the lot in `root`, sorted by path."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory: give the folder that holds the images")
    files, escaping = _image_files(root)
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        items = _from_manifest(root, manifest, routing_field, files)
    else:
        items = [_from_name(path, routing_field) for path in files]
    outside = {path: LotItem(path, problem=f"{path} is a symbolic link that leads outside the "
                                           "lot folder: not read; copy the file into the lot")
               for path in escaping}
    items = [outside.get(item.path, item) for item in items]
    items += [item for path, item in outside.items() if path not in {i.path for i in items}]
    return sorted(items, key=lambda item: item.path)


def _image_files(root: Path) -> tuple[list[str], set[str]]:
    """(image files, relative paths), and the symbolic links among them (and links to
    folders) that lead outside the lot. Folders reached through links are not walked."""
    found, escaping = [], set()
    real_root = root.resolve()
    for folder, dirs, names in os.walk(root):  # followlinks=False: no loops, no escapes
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for d in dirs:
            if (Path(folder) / d).is_symlink() and not _inside(Path(folder) / d, real_root):
                escaping.add((rel_folder / d).as_posix())
        for name in names:
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = (rel_folder / name).as_posix()
            if path.is_symlink() and not _inside(path, real_root):
                escaping.add(rel)
            elif path.is_file():
                found.append(rel)
    return found, escaping


def _inside(path: Path, real_root: Path) -> bool:
    return path.resolve().is_relative_to(real_root)


def _from_name(path: str, routing_field: str) -> LotItem:
    name = path.rsplit("/", 1)[-1]
    value, sep, rest = name.partition(NAME_SEPARATOR)
    if not sep or not value or not rest:
        return LotItem(path, problem=f"cannot tell the {routing_field}: name the file "
                                     f"'<{routing_field}>{NAME_SEPARATOR}<anything>{Path(name).suffix}' "
                                     f"or list it in {MANIFEST_NAME}")
    return LotItem(path, {routing_field: value})


def _from_manifest(root: Path, manifest: Path, routing_field: str, files: list[str]) -> list[LotItem]:
    items: dict[str, LotItem] = {}
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "filename" not in header or routing_field not in header:
            raise ConfigError(f"{manifest}: the header must name 'filename' and '{routing_field}' "
                              f"(e.g. 'filename,{routing_field}'), got {header}")
        for row in reader:
            where = f"{MANIFEST_NAME} line {reader.line_num}"
            item = _manifest_item(root, row, routing_field, where)
            if item.path in items:
                raise ConfigError(f"{manifest}: {item.path!r} is listed twice (again on line "
                                  f"{reader.line_num}); list each image once")
            items[item.path] = item
    for path in files:
        if path not in items:
            items[path] = LotItem(path, problem=f"not listed in {MANIFEST_NAME}: add a row for it")
    return list(items.values())


def _manifest_item(root: Path, row: dict, routing_field: str, where: str) -> LotItem:
    name = (row.get("filename") or "").strip()
    fields = {k: (v or "").strip() for k, v in row.items() if k and k != "filename"}
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return LotItem(name or f"<{where}>", fields, problem=f"{where}: filename {name!r} must be a path "
                                                             f"inside the lot directory")
    path = Path(name).as_posix()  # "./a.png" and "a.png" are one image
    if not fields.get(routing_field):
        return LotItem(path, fields, problem=f"{where} gives no {routing_field}")
    if not _inside(root / path, root.resolve()):
        return LotItem(path, fields, problem=f"{where}: {path} is a symbolic link that leads "
                                             "outside the lot folder: not read")
    if not (root / path).is_file():
        return LotItem(path, fields, problem=f"listed in {where} but the file is missing")
    return LotItem(path, fields)


def read_image(file: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The image as the float32 tensor `shape` ([C, H, W]) its expert takes. The size is
    checked from the file's header before decoding, so an oversized image costs no memory."""
    suffix = file.suffix.lower()
    if len(shape) != 3:
        raise ImageError(f"the expert takes a tensor of shape {list(shape)}, not an image [C, H, W]")
    if suffix in PIXEL_SUFFIXES:
        return _read_pixels(file, shape)
    if suffix in TENSOR_SUFFIXES:
        return _read_tensor(file, shape)
    raise ImageError(f"{file.name} is not a PNG, JPEG or .safetensors file")


def _read_pixels(file: Path, shape: tuple[int, ...]) -> torch.Tensor:
    from PIL import Image

    channels, height, width = shape
    if channels not in (1, 3):
        raise ImageError(f"the expert takes {channels} channels; PNG/JPEG give 1 or 3: "
                         f"pass a .safetensors tensor instead")
    try:
        with Image.open(file) as img:
            if img.format not in ("PNG", "JPEG"):
                raise ImageError(f"is a {img.format} image, not PNG or JPEG")
            if img.size != (width, height):
                raise ImageError(f"is {img.size[0]}x{img.size[1]} pixels; the expert takes "
                                 f"{width}x{height}: resize or crop it")
            pixels = np.array(img.convert("RGB" if channels == 3 else "L"))  # [H, W, 3] or [H, W] uint8
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None
    x = torch.from_numpy(pixels).float().div_(255.0)  # [H, W, C] or [H, W]
    return x.permute(2, 0, 1).contiguous() if channels == 3 else x[None]  # [C, H, W]


def _read_tensor(file: Path, shape: tuple[int, ...]) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
            if len(keys) != 1:
                raise ImageError(f"holds {len(keys)} tensors; put exactly one image tensor in each file")
            got = tuple(f.get_slice(keys[0]).get_shape())
            if got != tuple(shape):
                raise ImageError(f"holds a tensor of shape {list(got)}; the expert takes {list(shape)}")
            x = f.get_tensor(keys[0])
    except ImageError:
        raise
    except (OSError, SafetensorError, ValueError) as exc:
        raise ImageError(f"cannot read the safetensors file: {exc}") from None
    if not x.is_floating_point():
        raise ImageError(f"holds a {x.dtype} tensor; give float values (e.g. float32 in [0, 1])")
    return x.float()
