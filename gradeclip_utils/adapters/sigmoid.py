"""The scores of a CLIP trained with a sigmoid loss (SigLIP), whichever library built it.

SigLIP scores each image-text pair on its own: its logit is exp(logit_scale) cos + logit_bias and its
probability that the pair matches is the logit's sigmoid, not a softmax over the prompts given
(``methods.scores.SigmoidScore``). A model that carries a learnt ``logit_bias`` (transformers' ``SiglipModel``,
open_clip's SigLIP models) gives those two, its logit the default, and a CLIP's cosine and contrast.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .base import CLIPAdapter

SCORE_NOTE = ("SigLIP scores each image-text pair on its own: 'logit' (exp(logit_scale) x cos + logit_bias, the "
              "default), 'probability' (its sigmoid), 'cosine' or 'contrast'")


def has_logit_bias(model: nn.Module) -> bool:
    """Whether ``model`` carries a learnt logit bias: trained with a sigmoid loss."""
    return isinstance(getattr(model, "logit_bias", None), (nn.Parameter, Tensor))


class SigmoidScores:
    """The scores of an adapter whose model carries ``logit_bias`` (mixed into a ``CLIPAdapter``)."""

    score_names = ("logit", "probability", "cosine", "contrast")
    score_note = SCORE_NOTE

    @property
    def logit_bias(self) -> float:
        """The learnt bias b of the logit exp(logit_scale) cos + b."""
        return float(self.model.logit_bias.detach().float())

    def make_score(self, name: str, *, rest: Tensor | None = None, columns: Sequence[int] | None = None):
        from ..methods.scores import SIGMOID_SCORES, ExplainedScore, SigmoidScore  # the scores import the adapters

        if name in SIGMOID_SCORES:
            return SigmoidScore(name, self.logit_scale, None, columns, bias=self.logit_bias)
        return ExplainedScore(name, self.logit_scale, rest, columns)


class SigmoidCLIPAdapter(SigmoidScores, CLIPAdapter):
    """A CLIP adapter with SigLIP's scores (open_clip's SigLIP models)."""


def adapter_class(model: nn.Module) -> type[CLIPAdapter]:
    """``SigmoidCLIPAdapter`` for a model with a logit bias, else ``CLIPAdapter``."""
    return SigmoidCLIPAdapter if has_logit_bias(model) else CLIPAdapter


__all__ = ["SCORE_NOTE", "SigmoidCLIPAdapter", "SigmoidScores", "adapter_class", "has_logit_bias"]
