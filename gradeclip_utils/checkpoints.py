"""Reading checkpoint files safely, and CLIP's image normalisation: what the loaders of every family
(``loading`` and the adapters' family loaders) share, below both."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import GradEclipError

#: the normalisation every OpenAI-trained CLIP (and most others) was trained with
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class UnsafeCheckpointError(GradEclipError, ValueError):
    """A checkpoint file holds more than tensors (a pickle that would run code) and is refused."""


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".tar"}


def check_checkpoint(path: str | Path) -> None:
    """Refuse a checkpoint file that could run code when loaded, before any model is built.

    safetensors files hold tensors only and are checked for a readable header. Every other file is
    read as a torch checkpoint with ``weights_only=True`` (memory-mapped, so this costs little): a
    pickle that names anything but tensors and plain containers (a malicious ``__reduce__``, a
    TorchScript archive, a pickled module) raises ``UnsafeCheckpointError`` and nothing in it runs.
    numpy ``.npz``/``.npy`` weights are read by open_clip with pickles disallowed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:
            raise ValueError(f"cannot read safetensors checkpoint {path}: {type(error).__name__}: {error}") from error
        return
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript archive")  # refused below, clearly
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise UnsafeCheckpointError(
            f"refusing checkpoint {path}: it is a pickle that holds more than tensors, and loading it could run "
            f"code ({first_line[:200]}). Only safetensors files and torch checkpoints of plain tensors "
            "(weights_only=True) are loaded; if you trust the file, convert it to safetensors yourself.") from None
    except RuntimeError as error:
        if "TorchScript" in str(error):
            raise UnsafeCheckpointError(
                f"refusing checkpoint {path}: it is a TorchScript archive, which is not loaded as weights; save "
                "its state_dict as safetensors instead.") from None
        raise ValueError(f"cannot read checkpoint {path} (truncated or corrupt?): {str(error)[:300]}") from error
    except (EOFError, OSError, ValueError) as error:
        raise ValueError(f"cannot read checkpoint {path} (truncated or corrupt?): {type(error).__name__}: "
                         f"{str(error)[:300]}") from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file of plain tensors (checked first: a pickle
    holding more than tensors raises ``UnsafeCheckpointError`` before anything in it runs)."""
    path = Path(path)
    check_checkpoint(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state
