"""Grad-ECLIP without the spatial weight (l_i = 1): the paper's own ablation (docs/method.md section 6.10).

The map is ReLU(sum_c w_c v_i[c]) = ReLU(dS/da_cls,i) summed over heads: the channel weights alone.

Original code: github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py``: ``grad_eclip(...,
withksim=False)`` (the ``"eclip-wo-ksim"`` maps of its evaluation scripts); ``mode="official"``
reproduces it (the default ``mode="faithful"`` explains the model's own multi-head block).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..adapters import CLIPAdapter
from .grad_eclip import image_maps as grad_eclip_maps
from .outputs import MapOutput
from .registry import AuthorsProtocol, MethodSpec


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, **options: Any) -> MapOutput:
    """Grad-ECLIP maps with ``spatial_weight=False`` (all other options as for ``grad_eclip``)."""
    options.pop("spatial_weight", None)
    return grad_eclip_maps(adapter, pixels, targets, spatial_weight=False, **options)


SPEC = MethodSpec(
    name="grad_eclip_no_spatial", image=image_maps,
    options={"chunk": 128},
    # qk enters only the spatial weight, which this method leaves out
    uses=("layers", "mode", "score"),
    instead={"qk": "qk only enters the spatial weight; use grad_eclip to compare q and k"},
    # the authors' official mode (their out_proj q and k enter only the spatial weight, left out here)
    authors=AuthorsProtocol(options={"mode": "official"}),
)
