"""What one explanation holds while it runs: the model's lock, eval mode and gradients, restored exactly
after; and the release of a failed explanation's frames. A leaf module: ``prompts.py`` (text embeddings,
which the methods' ``prepare`` hooks use) and ``session.py`` (the runner of the methods) both stand on it.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
import weakref
from typing import Iterator

import torch
from torch import nn

KEEP_TRACEBACK_LOCALS = False
"""Set True to keep the locals of the package's frames in tracebacks (for a debugger); by default they
are released when an explanation raises, so that a kept exception (a notebook's last traceback) does
not keep the autograd graph and its activations alive."""

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises explanations of one model (re-entrant: nested calls are fine)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """The state an explanation needs, restored exactly after, also when the explanation raises.

    For the duration: the model's lock is held (other explanations of the same model wait), every
    module is in eval mode (dropout and patch dropout off) and gradients are on. After: each module's
    training flag is as it was, and each parameter's ``.grad`` is the same tensor with the same
    values (a method that calls ``backward()`` accumulates into fresh tensors, dropped after).
    ``requires_grad`` is never touched: the adapter differentiates with respect to captured
    activations, so frozen models are explained as they are. Nothing is registered on the model.
    """
    with model_lock(model):
        flags = [(module, module.training) for module in model.modules()]
        grads = [(p, p.grad) for p in model.parameters()]
        try:
            model.eval()
            for p, grad in grads:
                if grad is not None:
                    p.grad = None
            with torch.enable_grad():
                yield
        finally:
            for module, flag in flags:
                module.training = flag
            for p, grad in grads:
                if p.grad is not grad:
                    p.grad = grad


def release_frames(error: BaseException) -> None:
    """Drop the locals of the finished frames of ``error``'s traceback (and of the errors it chains):
    they hold the graph and activations of the failed explanation."""
    if KEEP_TRACEBACK_LOCALS:
        return
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


__all__ = ["KEEP_TRACEBACK_LOCALS", "explaining", "model_lock", "release_frames"]
