"""The package's errors share one base, GradEclipError, and keep the built-in parents they always had."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import gradeclip_utils
from gradeclip_utils import GradEclipError


def package_exception_classes() -> dict[str, type]:
    """Every exception class defined in a module of the package, found by importing each module."""
    found = {}
    for module_info in pkgutil.walk_packages(gradeclip_utils.__path__, prefix="gradeclip_utils."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_package_error_derives_from_the_base():
    classes = package_exception_classes()
    assert "gradeclip_utils.errors.GradEclipError" in classes and len(classes) >= 7, sorted(classes)
    missing = [name for name, cls in classes.items() if not issubclass(cls, GradEclipError)]
    assert not missing, f"derive these from gradeclip_utils.errors.GradEclipError too: {missing}"


@pytest.mark.parametrize("path, parent", [
    ("gradeclip_utils.adapters.UnsupportedModelError", TypeError),
    ("gradeclip_utils.adapters.UnsupportedMethodError", NotImplementedError),
    ("gradeclip_utils.checkpoints.UnsafeCheckpointError", ValueError),
    ("gradeclip_utils.loading.WeightsUnavailableError", RuntimeError),
    ("gradeclip_utils.loading.UnknownModelError", RuntimeError),
    ("gradeclip_utils.jobs.distributed.RankFailedError", RuntimeError),
    ("gradeclip_utils.notebooks.NotebookError", RuntimeError),
    ("gradeclip_utils.records.OutputNotWritableError", PermissionError),
])
def test_each_error_keeps_its_built_in_parent(path, parent):
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, GradEclipError) and issubclass(cls, parent)
    with pytest.raises(parent):  # code that catches the built-in parent still catches it
        raise cls("x") if name != "NotebookError" else cls("nb", "x")


def test_the_base_is_public():
    assert "GradEclipError" in gradeclip_utils.__all__ and gradeclip_utils.GradEclipError is GradEclipError
