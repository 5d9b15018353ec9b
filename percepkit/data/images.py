"""Reading, writing and arranging images as float tensors in [0, 1].

Odd inputs (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated) are normalised here, and
unreadable files raise :class:`~percepkit.errors.ImageError` naming the file and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from ..runtime.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(path: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``path`` (a file, or a folder searched recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageError(f"{path}: no such file or folder")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in path.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_array(img: Image.Image) -> np.ndarray:
    """Float32 HxWxC array in [0, 1] from any PIL mode, keeping 1 channel for gray images."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return (np.clip(arr / peak, 0.0, 1.0)[..., None]).astype(np.float32)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0, 1)[..., None]
    if img.mode in ("L", "LA", "1"):
        img = img.convert("L")
    elif img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" \
            else img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def read_image(path: str | Path, mode: Literal["RGB", "keep"] = "RGB") -> torch.Tensor:
    """Read an image as a float32 CxHxW tensor in [0, 1].

    ``mode="RGB"`` always returns 3 channels (gray is replicated, alpha dropped);
    ``mode="keep"`` returns 1 channel for single-channel files (how SR benchmarks score them).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            arr = _to_array(img)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:  # a header claiming billions of pixels
        raise ImageError(f"{path}: refused, too many pixels to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: unreadable image ({e}); the file may be truncated") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{path}: empty image")
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    if mode == "RGB" and tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1).contiguous()
    return tensor


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest 8-bit level (clamped to [0, 1]), as saving a uint8 image does."""
    return x.clamp(0, 1).mul(255).round().div(255)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """HxWxC (or HxW for 1 channel) uint8 array from a CxHxW float tensor in [0, 1].

    Converted in bands of rows straight into the contiguous HWC array, so a large image (an x4
    upscale of 1024², 200 MB of float32) costs its 8-bit copy and no full-size temporaries."""
    image = image.detach()
    c, h, w = image.shape
    out = torch.empty(h, w, c, dtype=torch.uint8)
    band = max(1, (1 << 22) // max(1, c * w))  # about 16 MB of float32 temporaries per band
    for r0 in range(0, h, band):
        rows = image[:, r0:r0 + band].float().clamp(0, 1).mul_(255).round_()
        out[r0:r0 + band].copy_(rows.permute(1, 2, 0))
    arr = out.numpy()
    return arr[..., 0] if c == 1 else arr


#: zlib level of written PNGs: OpenCV's default (so BasicSR's), 3.6x faster to write than
#: Pillow's default 6 for a 2048x2048 upscale (0.49 vs 1.76 s) and 21% larger
PNG_COMPRESS_LEVEL = 1


def write_image(path: str | Path, image: torch.Tensor) -> Path:
    """Write a CxHxW float tensor in [0, 1] as an 8-bit image, atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(to_uint8(image))
    suffix = path.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix, Image.registered_extensions().get(suffix))
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension {suffix!r}")
    options = {"JPEG": {"quality": 95}, "PNG": {"compress_level": PNG_COMPRESS_LEVEL}}
    atomic_write(path, lambda f: pil.save(f, format=fmt, **options.get(fmt, {})))
    return path


def image_grid(
    images: Sequence[torch.Tensor],
    labels: Sequence[str] | None = None,
    pad: int = 4,
    height: int | None = None,
) -> torch.Tensor:
    """Side-by-side 3xHxW grid of images (resized by nearest to a common height), with labels.

    Nearest-neighbour resizing keeps pixels visible so people can compare details.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    height = height or max(int(im.shape[-2]) for im in images)
    tiles = []
    for im in images:
        im = im.detach().float().cpu().clamp(0, 1)
        im = im.expand(3, -1, -1) if im.shape[0] == 1 else im[:3]
        if im.shape[-2] != height:
            width = max(1, round(im.shape[-1] * height / im.shape[-2]))
            im = torch.nn.functional.interpolate(im[None], size=(height, width), mode="nearest")[0]
        tiles.append(im)
    label_h = 16 if labels else 0
    width = sum(t.shape[-1] for t in tiles) + pad * (len(tiles) + 1)
    canvas = torch.ones(3, height + 2 * pad + label_h, width)
    x = pad
    for t in tiles:
        canvas[:, pad + label_h:pad + label_h + height, x:x + t.shape[-1]] = t
        x += t.shape[-1] + pad
    if labels:
        pil = Image.fromarray(to_uint8(canvas))
        draw = ImageDraw.Draw(pil)
        x = pad
        for t, label in zip(tiles, labels):
            draw.text((x + 2, pad), str(label), fill=(0, 0, 0))
            x += t.shape[-1] + pad
        canvas = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return canvas


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """3xHxW images one below the other, left-aligned on a white canvas as wide as the widest."""
    canvas = torch.ones(3, sum(int(r.shape[-2]) for r in rows), max(int(r.shape[-1]) for r in rows))
    y = 0
    for r in rows:
        canvas[:, y:y + r.shape[-2], : r.shape[-1]] = r
        y += r.shape[-2]
    return canvas


def resize_longer_side(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize (3, H, W) so that its longer side is ``size`` (antialiased); None keeps it."""
    if not size:
        return image
    h, w = image.shape[-2:]
    f = size / max(h, w)
    new = (max(1, round(h * f)), max(1, round(w * f)))
    if new == (h, w):
        return image
    return F.interpolate(image[None], size=new, mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def resize_shorter_side(img: torch.Tensor, short: int) -> torch.Tensor:
    """Resize (C, H, W) so that its shorter side is ``short`` (bicubic, antialiased)."""
    h, w = img.shape[-2:]
    if min(h, w) == short:
        return img
    f = short / min(h, w)
    size = (max(short, round(h * f)), max(short, round(w * f)))
    out = F.interpolate(img[None], size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(0, 1)


def mix_channels(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` (3x3) applied to the channels of (..., 3, H, W) ``x``: colour-space changes."""
    return torch.einsum("ij,...jhw->...ihw", matrix.to(device=x.device, dtype=x.dtype), x)
