"""Downloads from the Hugging Face hub (and open_clip's weight URLs) without waiting on a network that is not there.

Offline by choice (``HF_HUB_OFFLINE=1``, huggingface_hub's own switch, or ``TRANSFORMERS_OFFLINE=1``) is honoured
before anything is built or asked for. Otherwise the host is probed once per process with one TCP connection
(``PROBE_TIMEOUT`` seconds at most); where it cannot be reached, the load runs in huggingface_hub's offline mode:
files already in the local cache load, others fail at once instead of after huggingface_hub's five retries per
file with their warnings (about 70 seconds and 44 lines for an open_clip tag).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlparse

__all__ = ["PROBE_TIMEOUT", "from_pretrained", "hub_endpoint", "model_config", "offline_by_choice", "session",
           "unreachable"]

#: seconds the one connection that tells whether a host can be reached may take
PROBE_TIMEOUT = 3.0
_TRUE = {"1", "on", "yes", "true"}


def offline_by_choice() -> bool:
    """Whether the user asked for offline mode: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set now (also when
    set after huggingface_hub was imported, which reads them once at import), or huggingface_hub's own flag."""
    if any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT``, a mirror, where it is set)."""
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int) -> bool:
    """One TCP connection to ``host:port`` (cached for the process: the answer is asked for at each load)."""
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
        return True
    except OSError:
        return False


def unreachable(url: str | None = None) -> str | None:
    """Why ``url`` (default: the hub) cannot be downloaded from now, or None where it may be: offline by choice,
    or its host not reachable. Behind a proxy the host is not probed (the proxy decides)."""
    if offline_by_choice():
        return "HF_HUB_OFFLINE is set"
    parsed = urlparse(url or hub_endpoint())
    if not parsed.hostname or parsed.scheme not in ("http", "https"):
        return None
    if parsed.scheme in urllib.request.getproxies():
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if _reachable(parsed.hostname, port):
        return None
    return f"{parsed.hostname} cannot be reached: no network"


@contextmanager
def session(offline: bool) -> Iterator[None]:
    """The frame of a load that may download: huggingface_hub (and transformers, which asks it) in offline mode
    when ``offline``; and the root logger kept from growing a stderr handler by the libraries' module-level
    ``logging.info`` calls (open_clip's), which would print every huggingface_hub warning twice and open_clip's
    own ERROR line beside the package's message. A root logger the user configured is left alone."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    constants = None
    if offline:
        try:
            from huggingface_hub import constants
        except ImportError:
            constants = None
    before = constants.HF_HUB_OFFLINE if constants is not None else None
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = before
        if guard is not None:
            root.removeHandler(guard)


def model_config(spec: str) -> dict:
    """A Hugging Face model's config.json as a dict: a local folder's, or the hub's through transformers (in
    offline mode when the hub cannot be reached); {} when there is none (offline, or not a model: the loader
    that is tried next says why)."""
    import json
    from pathlib import Path

    folder = Path(spec).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    try:
        from transformers import AutoConfig

        with session(unreachable() is not None):
            return AutoConfig.from_pretrained(spec).to_dict()
    except Exception:
        return {}


def from_pretrained(cls: Any, spec: str, dtype: Any, **kwargs: Any) -> Any:
    """``cls.from_pretrained(spec)`` from safetensors weights only, in ``dtype``: transformers 5.x's ``dtype``
    keyword, or 4.x's ``torch_dtype`` where it refuses that one."""
    try:
        return cls.from_pretrained(spec, dtype=dtype, use_safetensors=True, **kwargs)
    except TypeError:  # transformers 4.x calls the dtype torch_dtype
        return cls.from_pretrained(spec, torch_dtype=dtype, use_safetensors=True, **kwargs)
