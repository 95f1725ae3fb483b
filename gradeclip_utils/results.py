"""Explanation results: small typed objects with normalisation, plotting and saving."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .config import ExplainConfig
from .maps import normalise_maps, resize_maps


def _check_index(index: int, count: int, what: str) -> int:
    """An int index (negative from the end) within ``count`` items, else a clear error."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{what} index must be an int, got {type(index).__name__}")
    if not -count <= int(index) < count:
        raise IndexError(f"{what} index {index} out of range for {count} {what}s")
    return int(index) % count


@dataclass
class ImageExplanation:
    """Heat maps of B images against K prompts.

    ``raw`` holds one (K, h, w) float32 map stack per image, unnormalised (faithfulness metrics and
    cross-prompt comparisons need these values); ``scores`` (B, K) are the explained scores from the
    same forward pass (the image-text cosines by default; the logits, the probabilities among the prompts
    or the contrasts with ``score=``); ``images`` are the pictures the model saw; ``settings`` record how
    the maps were made (method, layers, mode, qk, resolution, score, model: ``config.to_settings``, what
    ``save`` stores; a result saved before the score was a setting has none: it explains the cosine);
    ``config`` is the ``ExplainConfig`` they were made with (absolute layers, the method's options as
    completed for the call; None for a loaded result).
    """

    raw: list[torch.Tensor]
    scores: torch.Tensor
    prompts: list[str]
    images: list[Image.Image]
    settings: dict[str, Any] = field(default_factory=dict)
    config: ExplainConfig | None = None

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> "ImageExplanation":
        index = _check_index(index, len(self), "image")
        return ImageExplanation([self.raw[index]], self.scores[index].unsqueeze(0),
                                list(self.prompts), [self.images[index]], dict(self.settings), self.config)

    @property
    def grid_sizes(self) -> list[tuple[int, int]]:
        return [tuple(m.shape[-2:]) for m in self.raw]

    @property
    def grid_size(self) -> tuple[int, int]:
        sizes = set(self.grid_sizes)
        if len(sizes) != 1:
            raise ValueError(f"the images have different patch grids {sorted(sizes)}; index one image (ex[i]) "
                             "or explain at resolution='model'")
        return sizes.pop()

    @property
    def maps(self) -> torch.Tensor:
        """Raw maps (B, K, h, w); all images must share a patch grid (else index them one by one)."""
        self.grid_size
        return torch.stack(self.raw)

    def heatmaps(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Maps upsampled bilinearly to ``size`` (H, W) (default: the pictures' size) and min-max
        normalised to [0, 1] per map: (B, K, H, W)."""
        if size is None:
            sizes = {image.size[::-1] for image in self.images}
            if len(sizes) != 1:
                raise ValueError("the images have different sizes; pass size=(H, W) or index one image (ex[i])")
            size = sizes.pop()
        return torch.stack([normalise_maps(resize_maps(m, size)) for m in self.raw])

    def heatmap(self, image: int = 0, prompt: int = 0) -> np.ndarray:
        """One normalised heat map at its picture's size, as a numpy array."""
        image = _check_index(image, len(self), "image")
        prompt = _check_index(prompt, len(self.prompts), "prompt")
        picture = self.images[image]
        return normalise_maps(resize_maps(self.raw[image][prompt], picture.size[::-1])).numpy()

    def top_prompt(self) -> list[str]:
        """The best-matching prompt of each image."""
        return [self.prompts[int(i)] for i in self.scores.argmax(dim=1)]

    def plot(self, **kwargs: Any):
        """Grid of images x prompts with heat-map overlays and scores (see plotting.plot_explanation_grid)."""
        from .plotting import plot_explanation_grid  # matplotlib: loaded when a figure is first drawn

        return plot_explanation_grid(self, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Save maps, scores and settings to a ``.npz`` file (pictures are not stored)."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"raw_{i}": m.numpy() for i, m in enumerate(self.raw)}
        meta = {"prompts": self.prompts, "settings": self.settings, "count": len(self.raw)}
        meta = json.loads(json.dumps(meta, default=str))  # settings that JSON cannot hold are kept as text
        np.savez_compressed(path, scores=self.scores.numpy(), meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path, images: Sequence[Image.Image] | None = None) -> "ImageExplanation":
        """Load what ``save`` wrote (no pickle); pictures are blank unless given."""
        with np.load(Path(path), allow_pickle=False) as data:
            if "meta" not in data.files or "scores" not in data.files:
                raise ValueError(f"{path} is not a saved ImageExplanation (no 'meta' and 'scores' arrays)")
            meta = json.loads(str(data["meta"]))
            raw = [torch.from_numpy(data[f"raw_{i}"]) for i in range(meta["count"])]
            scores = torch.from_numpy(data["scores"])
        if images is None:
            images = [Image.new("RGB", (m.shape[-1], m.shape[-2])) for m in raw]
        return cls(raw, scores, meta["prompts"], list(images), meta["settings"])


def _noted_cut(fig: Any, ax: Any, pair: "WordImportance", loc: str) -> Any:
    """``fig`` with the words ``pair`` lost to the context length named under its title (``text.cut_note``)."""
    if not pair.truncated:
        return fig
    from .text import cut_note

    ax = ax if ax is not None else fig.axes[0]
    title = ax.get_title(loc=loc)
    ax.set_title(f"{title}\n{cut_note(pair.truncated)}" if title else cut_note(pair.truncated), fontsize=9, loc=loc)
    return fig


@dataclass
class WordImportance:
    """Word importance of one (image, text) pair."""

    text: str
    tokens: list[str]
    token_importance: np.ndarray
    words: list[str]
    word_importance: np.ndarray
    score: float
    truncated: list[str] = field(default_factory=list)  # the words past the context length, not explained


@dataclass
class TextExplanation:
    """Importance of the words of K texts for their match with B images.

    ``tokens[k]`` are the BPE pieces of text k (start and end tokens dropped; a piece ending a word
    ends with '</w>'); ``token_importance`` (B, K, T) and ``word_importance`` (B, K, W) are zero-padded
    to the longest text, each row summing to 1 over its own pieces (or all zero when nothing is
    relevant); ``words[k]`` are whole words, their importance the sum of their pieces. ``scores`` (B, K)
    are the explained scores (the cosines by default). ``settings`` and ``config`` as for
    ``ImageExplanation`` (the settings record no method options). ``truncated[k]``: the
    words of text k past the text tower's context length, which the tokenizer cut off (neither embedded nor
    explained; [] when the text fits); the plots say so.
    """

    texts: list[str]
    tokens: list[list[str]]
    token_importance: torch.Tensor
    words: list[list[str]]
    word_importance: torch.Tensor
    scores: torch.Tensor
    images: list[Image.Image]
    settings: dict[str, Any] = field(default_factory=dict)
    config: ExplainConfig | None = None
    truncated: list[list[str]] = field(default_factory=list)

    def pair(self, image: int = 0, text: int = 0) -> WordImportance:
        image = _check_index(image, self.scores.shape[0], "image")
        text = _check_index(text, len(self.texts), "text")
        n_tokens, n_words = len(self.tokens[text]), len(self.words[text])
        return WordImportance(
            text=self.texts[text], tokens=list(self.tokens[text]),
            token_importance=self.token_importance[image, text, :n_tokens].numpy(),
            words=list(self.words[text]), word_importance=self.word_importance[image, text, :n_words].numpy(),
            score=float(self.scores[image, text]),
            truncated=list(self.truncated[text]) if text < len(self.truncated) else [])

    def plot_bar(self, image: int = 0, text: int = 0, **kwargs: Any):
        """The words' importance as bars (``plotting.plot_word_bars``); a text cut to the context length
        says in the title which words were ignored."""
        from .plotting import plot_word_bars  # matplotlib: loaded when a figure is first drawn

        pair = self.pair(image, text)
        fig = _noted_cut(plot_word_bars(pair, **kwargs), kwargs.get("ax"), pair, "center")
        if pair.truncated and kwargs.get("ax") is None:
            fig.tight_layout()  # room for the title's second line
        return fig

    def plot_text(self, image: int = 0, text: int = 0, **kwargs: Any):
        """The text with its words shaded by importance (``plotting.plot_highlighted_text``); a text cut to
        the context length says in the title which words were ignored."""
        from .plotting import plot_highlighted_text  # matplotlib: loaded when a figure is first drawn

        pair = self.pair(image, text)
        return _noted_cut(plot_highlighted_text(pair, **kwargs), kwargs.get("ax"), pair, "left")

    def to_frame(self):
        """Long-format pandas DataFrame: one row per (image, text, word)."""
        import pandas as pd

        rows = []
        for b in range(self.scores.shape[0]):
            for k, words in enumerate(self.words):
                for position, word in enumerate(words):
                    rows.append({"image": b, "text": self.texts[k], "position": position, "word": word,
                                 "importance": float(self.word_importance[b, k, position]),
                                 "score": float(self.scores[b, k])})
        return pd.DataFrame(rows)
