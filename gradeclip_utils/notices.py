"""Warnings addressed to the user: they point at the user's line, not at the package's."""

from __future__ import annotations

import sys
import warnings

_INTERNAL_MODULES = ("gradeclip_utils", "torch", "contextlib", "functools")


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the location of the first caller outside this package (and the decorators it goes
    through), so that the warning points at the user's line."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _INTERNAL_MODULES:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
