"""Turning user images into model inputs at "native" or "model" resolution, and back into pictures."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from .loading import LoadedModel

Resolution = Literal["native", "model"]
RESOLUTIONS: tuple[str, ...] = ("native", "model")
DEFAULT_MAX_PATCHES = 1600  # 40 x 40 patches: 640 px a side for a patch size of 16


@dataclass
class PreparedImage:
    """One image as the model sees it: normalised pixels (3, H, W) and the same pixels as a picture."""

    pixels: torch.Tensor
    display: Image.Image
    source: str


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully, with a clear error naming the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def native_size(width: int, height: int, patch: tuple[int, int], max_patches: int) -> tuple[int, int, bool]:
    """Each side rounded to the nearest multiple of the patch size (at least one patch); returns
    (width, height, capped) where the grid is scaled down, aspect kept, to at most ``max_patches``."""
    ph, pw = patch
    gw, gh = max(1, math.floor(width / pw + 0.5)), max(1, math.floor(height / ph + 0.5))  # halves round up
    capped = gw * gh > max_patches
    if capped:
        scale = math.sqrt(max_patches / (gw * gh))
        gw, gh = max(1, math.floor(gw * scale)), max(1, math.floor(gh * scale))
    return gw * pw, gh * ph, capped


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


def to_picture(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """Normalised (3, H, W) pixels back to an RGB picture."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    rgb = (pixels.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def prepare_image(model: "LoadedModel", image: Image.Image, resolution: Resolution, *,
                  max_patches: int = DEFAULT_MAX_PATCHES, source: str = "image") -> PreparedImage:
    """One PIL image to model input at the given resolution."""
    mean, std = model.normalization
    image = to_rgb(image)
    if resolution == "model":
        pixels = model.preprocess(image)
    elif resolution == "native":
        width, height, capped = native_size(image.width, image.height, model.adapter.patch_size, max_patches)
        if capped:
            warnings.warn(f"{source} ({image.width}x{image.height}) would give more than {max_patches} patches at "
                          f"native resolution; it is downscaled to {width}x{height} (pass max_patches to change this)",
                          UserWarning, stacklevel=4)
        if (width, height) != image.size:
            image = image.resize((width, height), Image.BICUBIC)
        pixels = normalise(_pil_to_tensor(image), mean, std)
    else:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    pixels = pixels.float()
    return PreparedImage(pixels=pixels, display=to_picture(pixels, mean, std), source=source)


def prepare_images(model: "LoadedModel", images: Any, resolution: Resolution = "native", *,
                   max_patches: int = DEFAULT_MAX_PATCHES) -> list[PreparedImage]:
    """Images as given by users to model inputs.

    Accepts a PIL image, a path, a list of these, or an already preprocessed tensor (3, H, W) or
    (B, 3, H, W) that is used as is (its sides must be multiples of the patch size).
    """
    mean, std = model.normalization
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) or (B, 3, H, W) preprocessed pixels, "
                             f"got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("the image batch is empty")
        if not torch.isfinite(images).all():
            raise ValueError("the image tensor holds NaN or infinite values")
        ph, pw = model.adapter.patch_size
        if images.shape[-2] % ph or images.shape[-1] % pw:
            raise ValueError(f"a preprocessed image tensor must have sides that are multiples of the patch size "
                             f"{ph}x{pw}; got {tuple(images.shape[-2:])}")
        return [PreparedImage(pixels=p.float().cpu(), display=to_picture(p, mean, std), source=f"tensor[{i}]")
                for i, p in enumerate(images)]
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    prepared = []
    for index, item in enumerate(items):
        if isinstance(item, (str, Path)):
            source, picture = str(item), load_image(item)
        elif isinstance(item, Image.Image):
            source, picture = f"image[{index}]", item
        else:
            raise TypeError(f"images must be PIL images, file paths or a preprocessed tensor; "
                            f"item {index} is {type(item).__name__}")
        prepared.append(prepare_image(model, picture, resolution, max_patches=max_patches, source=source))
    return prepared


def group_by_shape(prepared: Sequence[PreparedImage]) -> dict[tuple[int, ...], list[int]]:
    """Indices of images that share a pixel shape (and so a patch grid), in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(prepared):
        groups.setdefault(tuple(item.pixels.shape), []).append(index)
    return groups


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (..., h, w) maps to ``size`` (H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
