"""Turning user images into model inputs at "native" or "model" resolution, and back into pictures.

What counts as what (the rule is fixed, never guessed from the values):

* a path, a PIL image, a numpy array, or an integer/bool torch tensor is a **picture**: it is converted
  to 8-bit RGB and then preprocessed at the requested resolution;
* a floating-point torch tensor (3, H, W) or (B, 3, H, W) is **preprocessed pixels** (already resized
  and normalised with the model's mean and std) and is used as is.

Picture arrays: (H, W) is grayscale; a 3-D array has its channel axis (1, 3 or 4 channels: gray, RGB,
RGBA) last or first. When both ends could be the channel axis, numpy arrays are read channels-last
(H, W, C: the numpy and PIL convention) and torch tensors channels-first (C, H, W: the torch
convention). A 4-D array or tensor is a batch of such pictures. Value ranges by dtype: uint8 0-255,
uint16 0-65535, bool 0/1, other integers 0-255, floats 0-1; values outside the range are an error,
never rescaled silently.
"""

from __future__ import annotations

import math
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .notices import warn_user

if TYPE_CHECKING:
    from .loading import LoadedModel

Resolution = Literal["native", "model"]
RESOLUTIONS: tuple[str, ...] = ("native", "model")
DEFAULT_MAX_PATCHES = 1600  # 40 x 40 patches: 640 px a side for a patch size of 16
#: the largest picture a file may hold (500 megapixels, about 1.5 GB as 8-bit RGB): larger is refused as PIL
#: refuses decompression bombs; up to it, PIL's own warning (from 89 megapixels) is not shown, as the picture is
#: downscaled anyway
MAX_PICTURE_PIXELS = 500_000_000
_PIXEL_LIMIT_LOCK = threading.Lock()  # PIL's limit is one global
#: file suffixes read as images in folders (the evaluation's and the dataset explanation's)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
CHANNEL_COUNTS = (1, 3, 4)
_EXIF_ORIENTATION = 0x0112
#: the keywords of PNG text chunks whose values PIL's getexif reads (EXIF, or an XMP orientation)
_PNG_EXIF_TEXT_KEYS = frozenset({b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp", b"xmp"})
_PNG_CHUNK_TYPE = re.compile(rb"\w{4}")  # PIL's test of a chunk type; its reader stops at another



@dataclass
class PreparedImage:
    """One image as the model sees it: normalised pixels (3, H, W) and the same pixels as a picture."""

    pixels: torch.Tensor
    display: Image.Image
    source: str


@contextmanager
def pixel_limit() -> Iterator[None]:
    """The frame of opening an image file: PIL's decompression-bomb limit raised to ``MAX_PICTURE_PIXELS`` (or
    left where the user set it higher, or off) and its warning below that limit silenced. A large picture is
    downscaled anyway (``max_patches``, with the package's own warning); one above the limit is refused by PIL's
    DecompressionBombError, which ``load_image`` words."""
    before = Image.MAX_IMAGE_PIXELS
    with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if before is not None:
            Image.MAX_IMAGE_PIXELS = max(before, MAX_PICTURE_PIXELS // 2)  # PIL refuses above twice its limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully, EXIF orientation applied, with a clear error naming the file when it
    is missing, not a file, truncated, corrupt, not an image, or larger than ``MAX_PICTURE_PIXELS``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ValueError(f"cannot read image {path}: it is not a file")
    try:
        with pixel_limit():  # PIL checks the size when it opens the file (the lock is held for the header only)
            image = Image.open(path)
        with image:
            image.load()
            return upright(image)
    except MemoryError:
        raise
    except Image.DecompressionBombError as error:
        count = re.search(r"\((\d+) pixels\)", str(error))  # PIL's message gives the size
        size = f" ({int(count[1]):,} pixels)" if count else ""
        raise ValueError(f"cannot read image {path}: it has more than {MAX_PICTURE_PIXELS / 1e6:g} million pixels"
                         f"{size}, more than this package opens; downscale it first, or set PIL.Image.MAX_IMAGE_PIXELS "
                         "= None if you trust the file") from error
    except Exception as error:  # PIL's decoders raise many types for broken files
        raise ValueError(f"cannot read image {path} (truncated, corrupt or not an image): "
                         f"{type(error).__name__}: {error}") from error


def upright(image: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied (a no-op without the tag)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: nothing to apply
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def header_orientation(image: Image.Image, path: str | Path) -> int:
    """The EXIF orientation :func:`upright` gives the image of ``path`` once :func:`load_image` has
    decoded it, read from ``image`` (that file, opened, not loaded) without decoding its pixels.

    PIL reads a PNG's chunks after its pixel data (IDAT) only when it decodes them, and an eXIf chunk
    may lie there. This walks the chunk headers with seeks (skipping the pixel data), reads a late eXIf
    chunk's data and takes the orientation from it as PIL would after decoding (the last eXIf chunk
    wins; an animated PNG's walk stops at its next frame). A late text chunk that holds EXIF or XMP
    (rare) falls back to decoding the file. An unreadable EXIF block gives 1, as :func:`upright`
    applies nothing for it.
    ``image.info`` may be changed (it gets a late chunk's EXIF).
    """
    try:
        if image.format != "PNG":
            return image.getexif().get(_EXIF_ORIENTATION, 1) or 1
        late_exif, late_text = _png_late_exif(path, animated=bool(getattr(image, "is_animated", False)))
        if late_text:
            with Image.open(path) as whole:
                whole.load()
                return whole.getexif().get(_EXIF_ORIENTATION, 1) or 1
        if late_exif is not None:
            image.info["exif"] = b"Exif\x00\x00" + late_exif  # what PIL's eXIf reader stores
        # the base class's getexif: a PngImageFile's decodes the pixels first to read the late chunks
        return Image.Image.getexif(image).get(_EXIF_ORIENTATION, 1) or 1
    except Exception:  # unreadable EXIF (or file): upright applies nothing
        return 1


def _png_late_exif(path: str | Path, animated: bool) -> tuple[bytes | None, bool]:
    """(the data of the last eXIf chunk after the first IDAT or None, whether a text chunk there holds
    EXIF or XMP) of a PNG file: the chunks PIL reads after decoding the pixels, found by walking the
    chunk headers with seeks (the pixel data is skipped, not read). Stops where PIL's reader stops:
    at IEND, at a malformed chunk type or the end of the file, at an animated PNG's next frame (fcTL)."""
    exif, text, after_pixels = None, False, False
    with open(path, "rb", buffering=0) as file:  # unbuffered: a seek and an 8-byte read per chunk
        position = 8  # after the PNG signature
        while True:
            file.seek(position)
            head = file.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND" or not _PNG_CHUNK_TYPE.fullmatch(kind):
                break
            if kind == b"IDAT":
                after_pixels = True
            elif after_pixels:
                if kind == b"fcTL" and animated:
                    break
                if kind == b"eXIf":
                    data = file.read(length)
                    if len(data) < length:
                        break
                    exif = data
                elif kind in (b"tEXt", b"zTXt", b"iTXt"):
                    text = text or file.read(min(length, 80)).split(b"\0", 1)[0] in _PNG_EXIF_TEXT_KEYS
            position += 12 + length  # length, type, data, CRC
    return exif, text


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB.

    Transparency is composited on white; LAB goes through a colour transform; 16-bit modes ("I;16*") are scaled from their full range
    0-65535; 32-bit integer ("I") and float ("F") modes have no fixed range and are stretched from
    their own minimum to maximum. A mode PIL cannot convert gives a ValueError naming it.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        array = np.asarray(image).astype(np.float32) / 257.0
        return Image.fromarray(array.round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        finite = array[np.isfinite(array)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    if mode == "LAB":  # PIL's plain convert reinterprets the channels; a colour transform is needed
        try:
            from PIL import ImageCms

            transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                "LAB", "RGB")
            return ImageCms.applyTransform(image, transform)
        except (ImportError, OSError) as error:
            raise ValueError(f"cannot convert a LAB image to RGB (PIL's colour management is missing): "
                             f"{error}") from error
    try:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("La", "PA"):
            image = image.convert("RGBA") if image.mode == "PA" else image.convert("LA")
        if image.mode in ("RGBA", "LA", "RGBa"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB: {error}") from error


def _channel_axis(shape: tuple[int, ...], channels_last_first: bool) -> int:
    last, first = shape[-1] in CHANNEL_COUNTS, shape[0] in CHANNEL_COUNTS
    if last and (channels_last_first or not first):
        return -1
    if first:
        return 0
    raise ValueError(f"a picture array of shape {shape} has no channel axis of {CHANNEL_COUNTS} channels "
                     "first or last; give (H, W), (H, W, C) or (C, H, W)")


def array_to_picture(array: np.ndarray | torch.Tensor, source: str = "array") -> Image.Image:
    """A picture array or integer tensor (see the module docstring for the rule) to a PIL image."""
    is_tensor = isinstance(array, torch.Tensor)
    if is_tensor:
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"{source}: a picture array must be (H, W), (H, W, C) or (C, H, W); "
                         f"got shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{source}: the picture array is empty (shape {array.shape})")
    if array.ndim == 3:
        axis = _channel_axis(array.shape, channels_last_first=not is_tensor)
        if axis == 0:
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    kind = array.dtype.kind
    if kind == "b":
        levels = array.astype(np.float64) * 255.0
    elif kind in "ui":
        if array.dtype == np.uint8:
            levels = array
        elif array.dtype == np.uint16:
            levels = array.astype(np.float64) / 257.0
        else:
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > 255:
                raise ValueError(f"{source}: integer picture arrays other than uint16 hold 8-bit levels 0-255; "
                                 f"got values in [{low}, {high}] (dtype {array.dtype})")
            levels = array
    elif kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: the picture array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(f"{source}: float picture arrays must hold values in [0, 1]; got [{low:.4g}, {high:.4g}]"
                             " (divide 0-255 values by 255; a normalised float tensor (3, H, W) is taken as "
                             "preprocessed pixels only as a torch tensor)")
        levels = array.astype(np.float64) * 255.0
    else:
        raise TypeError(f"{source}: unsupported picture dtype {array.dtype}")
    picture = np.ascontiguousarray(np.asarray(levels, dtype=np.float64).round().clip(0, 255).astype(np.uint8))
    return Image.fromarray(picture)  # uint8 (H, W), (H, W, 3), (H, W, 4): L, RGB, RGBA


def native_size(width: int, height: int, patch: tuple[int, int], max_patches: int) -> tuple[int, int, bool]:
    """Each side rounded to the nearest multiple of the patch size (at least one patch); returns
    (width, height, capped) where the grid is scaled down, aspect kept as far as whole patches allow,
    to at most ``max_patches`` patches."""
    if max_patches < 1:
        raise ValueError(f"max_patches must be at least 1, got {max_patches}")
    ph, pw = patch
    gw, gh = max(1, math.floor(width / pw + 0.5)), max(1, math.floor(height / ph + 0.5))  # halves round up
    capped = gw * gh > max_patches
    if capped:
        scale = math.sqrt(max_patches / (gw * gh))
        gw, gh = max(1, math.floor(gw * scale)), max(1, math.floor(gh * scale))
        while gw * gh > max_patches:  # one side sits at its one-patch floor: shorten the other
            if gw >= gh:
                gw = max(1, max_patches // gh)
            else:
                gh = max(1, max_patches // gw)
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
    """One PIL image to model input at the given resolution.

    "native" keeps the aspect ratio, each side rounded to the patch size; an image that would give
    more than ``max_patches`` patches is downscaled to fit, with a warning. "model" is the model's own
    preprocessing (resize and centre crop). Tiny images (even 1 x 1) become at least one patch.
    """
    mean, std = model.normalization
    try:
        image.load()
        image = to_rgb(upright(image))
    except OSError as error:  # a lazily opened file that turns out truncated or corrupt
        name = getattr(image, "filename", "") or source
        raise ValueError(f"cannot read image {name} (truncated or corrupt): {error}") from error
    model.check_picture(image, source)  # the embedded synthetic model warns about pictures outside its world
    if resolution == "model":
        pixels = model.preprocess(image)
    elif resolution == "native":
        width, height, capped = native_size(image.width, image.height, model.adapter.patch_size, max_patches)
        if capped:
            warn_user(f"{source} ({image.width}x{image.height}) would give more than {max_patches} patches at "
                      f"native resolution; it is downscaled to {width}x{height} (max_patches, on the command line "
                      "--max-patches, changes this)")
        if (width, height) != image.size:
            image = image.resize((width, height), Image.BICUBIC)
        pixels = normalise(_pil_to_tensor(image), mean, std)
    else:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    pixels = pixels.float()
    return PreparedImage(pixels=pixels, display=to_picture(pixels, mean, std), source=source)


def _is_preprocessed(item: Any) -> bool:
    return isinstance(item, torch.Tensor) and item.is_floating_point()


def _prepare_pixels(model: "LoadedModel", tensor: torch.Tensor, name: str) -> list[PreparedImage]:
    """Preprocessed float pixels (3, H, W) or (B, 3, H, W), used as is."""
    mean, std = model.normalization
    pixels = tensor.detach()
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"{name}: a float tensor is taken as preprocessed pixels and must be (3, H, W) or "
                         f"(B, 3, H, W); got shape {tuple(tensor.shape)}. For a picture, pass a numpy array "
                         "(values 0-1 or 0-255 by dtype), a uint8 tensor or a PIL image")
    if pixels.shape[0] == 0:
        raise ValueError("the image batch is empty")
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    ph, pw = model.adapter.patch_size
    if pixels.shape[-2] % ph or pixels.shape[-1] % pw or pixels.shape[-2] < ph or pixels.shape[-1] < pw:
        raise ValueError(f"{name}: preprocessed pixels must have sides that are positive multiples of the patch "
                         f"size {ph}x{pw}; got {tuple(pixels.shape[-2:])}. For a picture of any size, pass a "
                         "numpy array, a uint8 tensor or a PIL image")
    if bool(pixels.min() >= 0) and bool(pixels.max() <= 1):
        warn_user(f"{name}: all values lie in [0, 1], which looks like an unnormalised picture; float tensors "
                  "are used as preprocessed (normalised) pixels. Pass a numpy array or a uint8 tensor to have "
                  "a picture preprocessed")
    return [PreparedImage(pixels=p.float().cpu(), display=to_picture(p, mean, std), source=f"{name}[{i}]")
            for i, p in enumerate(pixels)]


def prepare_images(model: "LoadedModel", images: Any, resolution: Resolution = "native", *,
                   max_patches: int = DEFAULT_MAX_PATCHES) -> list[PreparedImage]:
    """Images as given by users to model inputs.

    Accepts a path, a PIL image, a numpy array or integer tensor holding a picture (or a batch of them),
    a float tensor (3, H, W) or (B, 3, H, W) of preprocessed pixels used as is (its sides must be
    multiples of the patch size; ``resolution`` does not apply to it), or a list of these. The module
    docstring gives the exact rule for arrays.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 1:
        raise ValueError(f"max_patches must be a positive int, got {max_patches!r}")
    if _is_preprocessed(images):
        return _prepare_pixels(model, images, "tensor")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        items = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError("no images given")
    prepared: list[PreparedImage] = []
    for index, item in enumerate(items):
        source = f"image[{index}]"
        if isinstance(item, (str, Path)):
            source, picture = str(item), load_image(item)
        elif isinstance(item, Image.Image):
            picture = item
        elif _is_preprocessed(item):
            prepared.extend(_prepare_pixels(model, item, f"tensor[{index}]"))
            continue
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            picture = array_to_picture(item, source)
        else:
            raise TypeError(f"images must be file paths, PIL images, numpy arrays or tensors; item {index} is "
                            f"{type(item).__name__}")
        prepared.append(prepare_image(model, picture, resolution, max_patches=max_patches, source=source))
    return prepared


def class_names(folders: Sequence[str]) -> list[str]:
    """Class names of an ImageNet-style tree's class folders: ImageNet's 1000 wnid folders get the standard
    names, other folders their own name (``_`` as a space)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = all(len(f) == 9 and f[0] == "n" and f[1:].isdigit() for f in folders)
    if wnids and len(folders) == len(IMAGENET_CLASSNAMES):
        return list(IMAGENET_CLASSNAMES)
    return [f.replace("_", " ") for f in folders]


def group_by_shape(prepared: Sequence[PreparedImage]) -> dict[tuple[int, ...], list[int]]:
    """Indices of images that share a pixel shape (and so a patch grid), in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(prepared):
        groups.setdefault(tuple(item.pixels.shape), []).append(index)
    return groups
