"""The base of the package's own errors.

Every error the package raises on purpose derives from ``GradEclipError`` and, beside it, from the built-in
exception it has always been (``UnsupportedModelError`` is a ``TypeError``, ``UnsupportedMethodError`` a
``NotImplementedError``, ...), so that ``except GradEclipError`` catches all of them and ``except TypeError``
and the like still catch what they caught before. Their messages name the problem and the fix; the
``gradeclip`` command prints them as one line.
"""

from __future__ import annotations

__all__ = ["GradEclipError", "WeightsUnavailableError"]


class GradEclipError(Exception):
    """A problem the package detected and explains in its message (a mixin base: see the module docstring)."""


class WeightsUnavailableError(GradEclipError, RuntimeError):
    """Pretrained weights (or a model's tokenizer) could not be found locally or downloaded."""
