"""Models side by side: the same images and prompts explained under two or more models (CLIPs of any
family), with their scores and how much their maps agree.

    comparison = compare_models({"OpenAI": openai_model, "LAION": laion_model}, images, prompts)
    comparison.scores        # (M, B, K) image-text cosines per model
    comparison.agreement()   # (B, K, M, M) Spearman rank correlation of the maps between models
    comparison.plot(image=0) # models x prompts overlays, a shared or per-map colour scale

Each model embeds the prompts itself (its own text tower), so prompts are texts, never embeddings. An image
classifier among them reads each prompt as one of its classes (a label name or an index; ``prompts.class_index``),
and explains its own default score (the logit) where a CLIP explains the cosine, unless ``score`` is given
(which every model must then give); an error one model raises names that model.
Maps of models with other patch sizes or resolutions are compared on one pixel grid: each map is
upsampled bilinearly to the first model's picture of that image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .maps import resize_maps
from .results import ImageExplanation


@dataclass
class ModelComparison:
    """``explanations[m]`` is model ``names[m]``'s ImageExplanation of the same images and prompts."""

    names: list[str]
    explanations: list[ImageExplanation]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def prompts(self) -> list[str]:
        return self.explanations[0].prompts

    @property
    def scores(self) -> torch.Tensor:
        """(M, B, K) explained scores, each model's own (image-text cosines by default; a classifier's logits)."""
        return torch.stack([ex.scores for ex in self.explanations])

    def common_size(self, image: int) -> tuple[int, int]:
        """The pixel grid maps of ``image`` are compared on: the first model's picture."""
        return self.explanations[0].images[image].size[::-1]

    def upsampled(self, image: int = 0) -> torch.Tensor:
        """Raw maps of one image, every model upsampled to the common size: (M, K, H, W)."""
        size = self.common_size(image)
        return torch.stack([resize_maps(ex.raw[image], size) for ex in self.explanations])

    def agreement(self) -> np.ndarray:
        """(B, K, M, M) Spearman rank correlations between the models' maps of each image and prompt
        (``metrics.spearman``: a constant map scores 0 against a varying one, 1 against another constant)."""
        from .metrics import spearman

        count, models = len(self.explanations[0]), len(self.names)
        out = np.ones((count, len(self.prompts), models, models))
        for b in range(count):
            maps = self.upsampled(b)  # (M, K, H, W)
            for i in range(models):
                for j in range(i + 1, models):
                    out[b, :, i, j] = out[b, :, j, i] = spearman(maps[i], maps[j])
        return out

    def plot(self, image: int = 0, *, shared_scale: bool = False, title: str | None = None, width_px: int = 980,
             colorbar: bool = True, alpha: float = 0.5, reuse: Any = None):
        """One overlay per model and prompt, a row per model when the prompts fit in ``width_px``
        (``plotting.heat_map_panels``: fixed text sizes, a colour bar, a red frame where the score S is
        negative), each titled with the model, the prompt and its score. With ``shared_scale`` every panel is on one scale of raw values (``plotting.map_scale``:
        from min(0, smallest value) to the largest), so that a model whose maps are weaker looks weaker, as
        in the explorers; by default each map is min-max scaled on its own. ``reuse``: a figure this method
        drew before, updated in place when its layout fits."""
        from .plotting import heat_map_panels, signed  # matplotlib: loaded when a figure is first drawn

        from .methods.scores import SYMBOLS

        maps = self.upsampled(image)  # (M, K, H, W)
        named = self.settings.get("score_names") or ["cosine"] * len(self.names)
        panels, titles, flagged = [], [], []
        for m, name in enumerate(self.names):
            for k in range(len(self.prompts)):
                score = float(self.explanations[m].scores[image, k])
                panels.append(maps[m, k].numpy())
                symbol = SYMBOLS.get(named[m], "S")
                titles.append(f"{name}\n{self.explanations[m].prompts[k]}\n{symbol} = {signed(score)}")
                flagged.append(score < 0)
        scale = "shared" if shared_scale else "panel"
        if title is None:
            described = self.settings.get("models") or [{}] * len(self.names)
            families = ", ".join(f"{n}: {d.get('family', '?')}" for n, d in zip(self.names, described))
            title = (f"{self.settings.get('method', 'grad_eclip')} \u00b7 {self.settings.get('mode', 'faithful')} mode"
                     f" \u00b7 {families}\n"
                     + ("one colour scale for all panels" if shared_scale else "each panel on its own scale"))
        picture = self.explanations[0].images[image]
        if picture.size[::-1] != tuple(maps.shape[-2:]):
            picture = picture.resize((int(maps.shape[-1]), int(maps.shape[-2])))
        return heat_map_panels(picture, panels, titles, title=title, scale=scale, colorbar=colorbar, flagged=flagged,
                               width_px=width_px, alpha=alpha, input_title=None, columns=len(self.prompts),
                               reuse=reuse)

    def save(self, path: str | Path) -> Path:
        """Maps, scores and settings of every model in one ``.npz`` (no pickle)."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for m, ex in enumerate(self.explanations):
            arrays[f"scores_{m}"] = ex.scores.numpy()
            for b, raw in enumerate(ex.raw):
                arrays[f"raw_{m}_{b}"] = raw.numpy()
        meta = {"names": self.names, "prompts": self.prompts, "count": len(self.explanations[0]),
                "settings": self.settings, "model_settings": [ex.settings for ex in self.explanations]}
        np.savez_compressed(path, meta=np.array(json.dumps(meta, default=str)), **arrays)
        return path


def compare_models(models: Mapping[str, Any] | Sequence[Any], images: Any, prompts: str | Sequence[str], *,
                   method: str = "grad_eclip", **options: Any) -> ModelComparison:
    """Explain the same ``images`` against the same text ``prompts`` under every model (a mapping of
    names to LoadedModels, or a sequence named by each model's name); ``options`` go to
    ``explain_image`` for every model (layers, mode, qk, resolution, ...). ``settings["score_names"]``: the
    score each model's values are (``methods.scores.values_score``)."""
    from .explain import explain_image
    from .loading import as_loaded
    from .methods.registry import values_score

    if isinstance(prompts, (torch.Tensor, np.ndarray)):
        raise TypeError("compare_models takes prompts as text: each model embeds them with its own text tower")
    if isinstance(models, Mapping):
        names, loaded = [str(n) for n in models], [as_loaded(m) for m in models.values()]
    else:
        loaded = [as_loaded(m) for m in models]
        names = [m.name for m in loaded]
        if len(set(names)) != len(names):
            names = [f"{m.name} ({m.family}) #{i}" for i, m in enumerate(loaded)]
    if len(loaded) < 2:
        raise ValueError("compare_models needs at least two models")
    explanations = []
    for name, model in zip(names, loaded):
        try:
            explanations.append(explain_image(model, images, prompts, method=method, **options))
        except (ValueError, TypeError, NotImplementedError) as error:  # say which model could not
            error.args = (f"model {name!r}: {error}", *error.args[1:])
            raise
    settings = {"method": method, **{k: v for k, v in options.items() if isinstance(v, (int, float, str, bool, tuple))},
                "models": [m.describe() for m in loaded],
                "score_names": [values_score(m.adapter, ex.config) for m, ex in zip(loaded, explanations)]}
    return ModelComparison(names, explanations, settings)
