"""``LayerViewer``: one image and prompt with a slider over the image blocks (the maps computed once)."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

from ..maps import resize_maps
from ..methods.registry import values_score
from ..methods.scores import SYMBOLS
from ..plotting import heat_map_panels, signed
from ..samples import default_resolution, named_images
from . import controls
from .base import DEBOUNCE_SECONDS, DEFAULT_WIDTH, BaseExplorer
from .markup import status_html, target_text


class BlockMap(NamedTuple):
    """What one render of the viewer shows: the picture, the map of the chosen blocks on it, the score."""

    picture: Any  # PIL image
    heat: np.ndarray
    score: float
    symbol: str  # how the score is named (``methods.scores.SYMBOLS``): "S", a classifier's "logit"


class LayerViewer(BaseExplorer):
    """One image and prompt (or a classifier's class: a name or an index) with a slider over the image blocks:
    the map of the chosen block (all blocks are explained once, when the viewer is made), or with
    ``cumulative`` ticked the sum of the per-block maps from the chosen block to the last (explain_image's
    combination of several blocks)."""

    timed = False  # switching between maps computed beforehand: nothing to time

    kind = "layers"

    def __init__(self, model: Any, image: Any, prompt: str | int, *, method: str = "grad_eclip", mode: str = "faithful",
                 resolution: str | None = None, width: int = DEFAULT_WIDTH, debounce: float = DEBOUNCE_SECONDS,
                 auto_render: bool = True) -> None:
        from ..studies.layers import layer_maps

        super().__init__(model, width=width, debounce=debounce)
        w = controls.ipywidgets()
        self.images = named_images([image])
        self.name = next(iter(self.images))
        self.image_source = image
        self.prompt, self.method, self.mode = prompt, method, mode
        self.resolution = resolution or default_resolution(model, image)
        self.maps = layer_maps(model, image, [prompt], method=method, mode=mode, resolution=self.resolution)
        blocks = sorted(self.maps)
        self.layer = controls.block_slider(blocks[0], blocks[-1], blocks[-1])
        self.cumulative = w.Checkbox(value=False, description="sum from this block to the last", indent=False,
                                     layout=w.Layout(width="auto"))
        self._layout("LayerViewer", [controls.row([self.layer, self.cumulative])])
        self._connect([self.layer, self.cumulative], auto_render)

    def settings(self) -> dict[str, Any]:
        block = self.layer.value
        layers = [b for b in sorted(self.maps) if b >= block] if self.cumulative.value else [block]
        return {"image": self.name, "prompts": [self.prompt], "layers": layers, "mode": self.mode,
                "method": self.method, "cumulative": self.cumulative.value}

    def compute(self, state: dict[str, Any]) -> BlockMap:
        """The chosen block's map (or the sum of the blocks from it to the last) on the picture."""
        chosen = self.maps[state["layers"][0]]
        picture = chosen.images[0]
        raw = sum(torch.relu(self.maps[b].raw[0][0]) for b in state["layers"])
        heat = resize_maps(raw, (picture.height, picture.width)).numpy()
        score = values_score(self.model.adapter, chosen.config)
        return BlockMap(picture, heat, float(chosen.scores[0, 0]), SYMBOLS.get(score, "S"))

    def draw(self, result: BlockMap, state: Mapping[str, Any]):
        """The picture and the map, titled with the blocks and the score."""
        layers = state["layers"]
        label = f"blocks {layers[0]}\u2013{layers[-1]} summed" if len(layers) > 1 else f"block {layers[0]}"
        title = (f"{target_text(str(self.prompt), self.labels)} on {self.name}\n{self._describe(state)} \u00b7 model "
                 f"{self.model.describe().get('model')}")
        panel = f"{label}\n{result.symbol} = {signed(result.score)}"
        return heat_map_panels(result.picture, [result.heat], [panel], title=title,
                               scale="panel", flagged=[result.score < 0], width_px=self.width, reuse=self._drawn)

    def show(self, result: BlockMap, state: dict[str, Any]) -> None:
        """The status line, with the score."""
        state["scores"] = [result.score]
        self.status.value = status_html(f"{self._describe(state)} \u00b7 {result.symbol} = {signed(result.score)}")
