"""One image and prompts explained at each image block on its own: the maps the layer viewer switches
between (``widgets.LayerViewer``) and notebook 06 draws in a strip (``studies.layers``).

Each block's map uses the gradient of the score with respect to that block's class-token attention output
and that block's own q, k, v (``explain_image`` with ``layers=(block,)``).
"""

from __future__ import annotations

from typing import Any, Sequence

from .samples import as_input, default_resolution


def layer_maps(model: Any, image: Any, prompts: str | Sequence[str], layers: Sequence[int] | None = None, *,
               method: str = "grad_eclip", mode: str = "faithful", resolution: str | None = None) -> dict:
    """{block: ImageExplanation} for every block (default: all image blocks), one block at a time."""
    from . import explain_image

    resolution = resolution or default_resolution(model, image)
    blocks = list(range(model.adapter.num_image_blocks)) if layers is None else list(layers)
    return {block: explain_image(model, as_input(image), prompts, layers=(block,), method=method, mode=mode,
                                 resolution=resolution, progress=False) for block in blocks}
