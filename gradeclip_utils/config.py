"""The settings of an explanation as one small typed object, validated once.

``ExplainConfig(method, layers, mode, qk, resolution, max_patches, options)`` is what an explanation
depends on: ``explain_image`` and ``explain_text`` build one from their keywords, the dataset job and the
explorers from theirs, the runner (``session.run_image_method``) takes one, and results carry the one
they were made with. ``to_settings()`` is the dict results and manifests store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

from .adapters import MODES
from .inputs import DEFAULT_MAX_PATCHES, RESOLUTIONS
from .methods.grad_eclip import QK_CHOICES

#: option values a result's settings record (others, such as tensors, are left out)
SCALARS = (int, float, str, bool)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """A ValueError naming the setting, its choices and the bad value, unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


@dataclass(frozen=True)
class ExplainConfig:
    """How to explain: the method, the blocks, the mode, the q/k of the spatial weight, the input
    resolution, the patch cap at native resolution, and the method's own options.

    ``layers``: block indices (negative from the end) or an int n for the last n blocks (``resolved``
    turns them into absolute indices for a model). ``mode`` is one of ``MODES``, ``qk`` of ``QK_CHOICES``
    and ``resolution`` of ``RESOLUTIONS``; another value is a ValueError naming the choices, raised when
    the config is made. ``options`` are the method's own (see its ``MethodSpec``).
    """

    method: str = "grad_eclip"
    layers: int | tuple[int, ...] = (-1,)
    mode: str = "faithful"
    qk: str = "raw"
    resolution: str = "native"
    max_patches: int = DEFAULT_MAX_PATCHES
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("qk", self.qk, QK_CHOICES)
        check_choice("resolution", self.resolution, RESOLUTIONS)
        if not isinstance(self.layers, int):  # a sequence (an int, and a bool, are resolve_layers' to judge)
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "options", dict(self.options))

    def resolved(self, adapter: Any, tower: Literal["image", "text"] = "image") -> "ExplainConfig":
        """This config with ``layers`` as the absolute block indices of ``adapter``'s ``tower``."""
        return replace(self, layers=tuple(adapter.resolve_layers(self.layers, tower)))

    def with_options(self, options: Mapping[str, Any]) -> "ExplainConfig":
        """This config with other method options."""
        return replace(self, options=options)

    def keywords(self) -> dict[str, Any]:
        """The keywords of ``explain_image`` that make this config (the options among them)."""
        return {"method": self.method, "layers": self.layers, "mode": self.mode, "qk": self.qk,
                "resolution": self.resolution, "max_patches": self.max_patches, **self.options}

    def to_settings(self, model: Mapping[str, Any] | None = None, *, options: bool = True) -> dict[str, Any]:
        """What a result's ``settings`` hold: method, layers (a list), mode, qk and resolution, then the
        model's description (``model.describe()``) and, with ``options``, the method options that are
        plain values (numbers, strings, booleans)."""
        layers = self.layers if isinstance(self.layers, int) else list(self.layers)
        settings = {"method": self.method, "layers": layers, "mode": self.mode, "qk": self.qk,
                    "resolution": self.resolution, **(model or {})}
        if options:
            settings.update({k: v for k, v in self.options.items() if isinstance(v, SCALARS)})
        return settings


__all__ = ["SCALARS", "ExplainConfig", "check_choice"]
