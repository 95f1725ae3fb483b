"""Image classifiers: what every classifier family shares (``ClassifierAdapter``, ``ClassifierTower``); the
families are ``hf_vit.py``, ``timm_classifier.py`` and ``torchvision_vit.py``.

A ViT classifier is a ViT image tower whose class token, after the final norm, goes through a linear head
to its logits over L classes; it has no text tower. It fits the methods' abstraction of an embedding
explained against target rows as follows:

- the image "embedding" is the logit vector z (B, L): the model's own output (``encode_image`` and
  ``native_encode_image`` give it), so ``embed_dim`` is the number of classes L;
- a target is a row t (L,) over the classes, one-hot e_k for class k (``prompts.class_targets`` turns class
  indices and label names into them);
- the explained score is a function of z and t, not a cosine (``methods/scores.py``, ``ClassScore``):
  the logit t . z = z_k (the default) or the probability t . softmax(z) = p_k, the softmax over all L
  classes.

Then d S / d o, the gradient Grad-ECLIP's channel weights are, is the gradient of the class logit (or
probability) with respect to the class token's attention output, as in the authors' ViT notebook, and every
method that differentiates or evaluates a score (Grad-CAM, LeGrad, GAME, RISE, M2IB) explains the class's
logit or probability unchanged. Methods that compare per-patch features with a text embedding (MaskCLIP,
CLIP Surgery, ITSM) need a space shared with the targets, which a classifier lacks (``joint_space``): they
are refused with that reason; text methods are refused because there is no text tower.

Official mode recomputes an explained block as the authors' ViT notebook does (``transformer.Official``):
one head of width C with the model's head-size scale, the attention's residual added to the block's
normalised input (docs/method.md, "ViT classifiers").
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .base import CLIPAdapter, ImageTower, LinearHead, score_refusal_text
from .transformer import Official, ViTTower

#: the authors' ViT classifier notebook (``gradeclip_adaptation_vit.ipynb``, ``vit_classifier``): one head of
#: width C whose logits are divided by sqrt(C / heads), the attention's residual added to ln_1(x)
NOTEBOOK_OFFICIAL = Official(head_scale=True, normed_residual=True)

#: why a classifier's tower lacks a space shared with its targets
NO_JOINT_SPACE = ("a classifier's targets are its classes, not embeddings in a space its patch tokens could be "
                  "mapped into and compared with (there is no text embedding to compare a patch with)")

#: why a distilled DeiT's averaged logit is not explained (its exact map, and what the methods lack for it)
DISTILLED_MAPS = ("Grad-ECLIP's map is linear in its channel weights before its ReLU and each token's attention "
                  "output reaches only its own head, so the averaged logit's map would be the sum of the class "
                  "token's and the distillation token's maps (the mean of the two heads' own maps); that takes two "
                  "pooled tokens and patch tokens from position 2, and every method reads the patches from position "
                  "1: not implemented")


class ClassifierTower(ViTTower):
    """A ViT classifier's image tower: a ``ViTTower`` whose head is the final norm and the classification
    head (its embedding is the logits), without a space shared with its targets.

    The family gives the head as two parts: ``feature`` (the pooled row to the F-wide input of the last
    linear layer: the final norm, and whatever the family applies before its classification layer) and
    ``linear`` (that layer, F -> L classes). A trace declares the feature (``LinearHead``), so that the
    Jacobian of the logits with respect to a capture costs F cotangents instead of L where F < L (ViT-B's
    768 for ImageNet's 1,000 classes: Grad-ECLIP's channel weights for every class).
    """

    kind = "ViT classifier"
    captures = ViTTower.captures - {"joint_space"}
    lacking = {"joint_space": NO_JOINT_SPACE}

    def __init__(self, *, feature: Callable[[Tensor], Tensor], linear: nn.Linear, **tower) -> None:
        super().__init__(head=lambda pooled: linear(feature(pooled)), embed_dim=int(linear.out_features), **tower)
        self._feature, self._linear = feature, linear

    def head_outputs(self, pooled: Tensor) -> tuple[Tensor, LinearHead | None]:
        feature = self._feature(pooled)
        return self._linear(feature), LinearHead(feature, self._linear.weight.detach())


class ClassifierAdapter(CLIPAdapter):
    """The adapter of an image classifier: an image tower whose embedding is the (B, L) logits, no text tower.

    ``labels`` name the L classes (the model's own, e.g. a Hugging Face ``config.id2label``, or "class i";
    ``set_labels`` replaces them with a list of the user's). ``normalization`` is the (mean, std) its inputs
    are normalised with by default (its family's).
    """

    is_classifier = True
    score_names = ("logit", "probability")
    score_note = ("it explains its class logit ('logit', the default) or its class probability ('probability', the "
                  "softmax over all its classes); it has no cosine with a text embedding")

    def make_score(self, name: str, *, rest: Tensor | None = None, columns: Sequence[int] | None = None):
        """A ``ClassScore``: the logit or the probability over all classes (``columns``: those kept)."""
        from ..methods.scores import ClassScore  # the scores import the adapters' errors
        return ClassScore(name, columns=None if columns is None else tuple(columns))

    def __init__(self, model: nn.Module, image: ImageTower, family: str, *, native_image: Callable[[Tensor], Tensor],
                 labels: Sequence[str] | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] = ((0.5,) * 3, (0.5,) * 3)) -> None:
        super().__init__(model, image, None, family, native_image=native_image, native_text=None)
        self.labels: tuple[str, ...] = tuple(f"class {i}" for i in range(self.num_classes))
        if labels is not None:
            self.set_labels(labels)
        self.normalization = (tuple(float(v) for v in normalization[0]), tuple(float(v) for v in normalization[1]))

    @property
    def num_classes(self) -> int:
        """L, the number of classes (the width of the logits)."""
        return self.image.embed_dim

    def set_labels(self, labels: Sequence[str]) -> None:
        """Name the classes: one string per class, in the head's order."""
        if isinstance(labels, str) or not all(isinstance(label, str) for label in labels):
            raise TypeError("class names must be a list of strings, one per class")
        labels = tuple(labels)
        if len(labels) != self.num_classes:
            raise ValueError(f"{len(labels)} class names for a classifier of {self.num_classes} classes")
        self.labels = labels


def class_score_refusal(score: str, family: str = "classifier") -> str | None:
    """Why an image classifier of ``family`` cannot give ``score`` (None for one of its scores): what the
    command line says before a classifier it names is loaded."""
    if score in ClassifierAdapter.score_names:
        return None
    return score_refusal_text(score, "an image classifier", family, ClassifierAdapter.score_names,
                              ClassifierAdapter.score_note)


__all__ = ["DISTILLED_MAPS", "NOTEBOOK_OFFICIAL", "NO_JOINT_SPACE", "ClassifierAdapter", "ClassifierTower", "class_score_refusal"]
