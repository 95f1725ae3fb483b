"""What one explanation holds while it runs: the model's lock, eval mode and gradients, restored exactly
after."""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
from torch import nn

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
