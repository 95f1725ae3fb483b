"""The explained score: what a method's map explains, as a function of the image-text cosines.

``SCORES`` (the setting ``score`` of ``ExplainConfig``, ``explain_image`` and ``explain_text``):

- ``"cosine"`` (default): S = cos(f_image, f_text), the image-text cosine.
- ``"logit"``: s x cos with s the model's logit scale (exp of its learnt ``logit_scale``, 100 for trained
  CLIPs): the logit of CLIP's zero-shot classifier. Its gradient is s times the cosine's, so the maps of
  a method linear in the gradient (Grad-ECLIP, Grad-CAM, LeGrad) are the cosine's times s.
- ``"probability"``: each prompt's softmax among the prompts given, at the model's logit scale:
  p_k = exp(s c_k) / sum_j exp(s c_j), the zero-shot class probability. With a single prompt p = 1
  whatever the image (its map is identically zero): refused.
- ``"contrast"``: S(a) - S(b) = cos(a) - cos(b) of two prompts, which of the image makes it match prompt a
  rather than prompt b. The prompts come as pairs (a, b); K pairs give K maps, labelled "a rather than b".

Image side (``of_images``): the (B, T) cosines of B images against T target rows become the (B, K)
explained scores: T = K rows, or 2K for the contrast (rows a_1, b_1, a_2, b_2, ...). Each image's scores
depend only on its own row of cosines, so the gradient of all images' k-th scores with respect to
per-image inputs is each image's own gradient (the one-hot cotangents the methods pull). Pulled back
through the score, the one-hot cotangent e_k of score k is a cotangent on the cosines: s e_k (logit),
s p_k (e_k - p) (probability), e_a - e_b (contrast): a linear combination of the per-prompt gradients, so
K explained scores cost one batched backward of K cotangents, as K cosines do (``pull`` is the same
combination of already computed per-prompt gradients).

Text side (``of_texts``, word importance): the (K, B) cosines of K captions against B images. The
probability is caption k's softmax among the captions given for image b; the gradient of p_kb with
respect to caption k's own tokens goes through c_kb alone (the other captions' tokens are other inputs),
so p_kb is written as a function of c_kb with the other captions' logits as constants:
p_kb = sigmoid(s c_kb - rest_kb), rest_kb = log sum_{j != k} exp(s c_jb). Its gradient is
s p_kb (1 - p_kb) times the cosine's: a positive multiple, so after the word importances are normalised
to sum 1 they equal the cosine's (for Grad-ECLIP, whose relevance is linear in the gradient before its
ReLU); the scores are the probabilities. ``rest`` comes from all captions even when ``explain_text``
runs them in chunks. The contrast has no text side (``TEXT_CONTRAST``).

Columns (``columns``, image side): the explained scores kept of the K the target rows give, in the order
given (repeats allowed): ``of_images`` and ``pull`` return those columns only, computed among every row, so
that a method maps a few of the K at the cost of those few. It is what the probability of a few classes
among a whole classifier needs (the dataset job's own classes, the evaluation's class of each image): the
softmax runs over every class, and the methods pull only the chosen columns' cotangents.

The probability is computed in float64 (a (B, K) matrix: no cost), so that p (1 - p) of a prompt whose
probability is close to 1 does not round to zero before s x cos differs by about 36.

An image classifier (``adapters/classifier.py``) has no cosine: its embedding is its logits z (B, L) over its
L classes and its targets are rows t (T, L) over the classes (one-hot rows e_k for class k), so that its
scores (``ClassScore``, ``CLASS_SCORES``) are ``"logit"`` (its default), S = t . z = z_k, and
``"probability"``, S = t . softmax(z) = p_k, the softmax over all its classes (not among the targets given:
one target has a probability too). Methods ask the score for the scores of an embedding
(``image_scores``) and, for Grad-ECLIP's K > D path, for their gradients with respect to it
(``embedding_gradients``), so that the same code explains both kinds of model. ``model_scores`` says which
scores a model gives (its default first); the default score named for a classifier (the cosine, which
methods that take no score are run with) stands for its own default, the logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..adapters.base import UnsupportedMethodError, score_refusal_text  # not the package: its families build scores
from .outputs import cosine_scores

#: the explained scores, the default first
SCORES: tuple[str, ...] = ("cosine", "logit", "probability", "contrast")
DEFAULT_SCORE = "cosine"
#: an image classifier's scores, its default first
CLASS_SCORES: tuple[str, ...] = ("logit", "probability")
#: the scores of a model trained with a sigmoid loss (SigLIP: ``SigmoidScore``), its default first
SIGMOID_SCORES: tuple[str, ...] = ("logit", "probability")
#: the scores that need the model's logit scale
SCALED: tuple[str, ...] = ("logit", "probability")
#: a model family's own name for one of CLIP's scores, and the score it computes as (BLIP's image-text
#: contrastive score is the cosine of its projected class tokens)
SCORE_ALIASES: dict[str, str] = {"itc": "cosine"}
#: scores of an image and a caption's tokens together, not of their embeddings (BLIP's image-text matching
#: probability, which reads the image through the text encoder's cross-attention): their targets are the
#: captions' token ids (``prompts.prompt_targets``), and only the methods that declare them explain them
MATCH_SCORES: tuple[str, ...] = ("itm",)
#: every score name a model may give (a model says which it gives: ``model_scores``)
KNOWN_SCORES: tuple[str, ...] = SCORES + tuple(SCORE_ALIASES) + MATCH_SCORES
#: why the methods that do not declare a score cannot explain it (said in their refusal)
SCORE_REASONS: dict[str, str] = {
    "itm": "the image-text matching head reads the image through the text encoder's cross-attention over every "
           "image token, not through the image class token or embedding that this method differentiates; explain "
           "it with itm_gradcam (Grad-CAM on the cross-attention), or explain score='itc'",
}
#: how figures name each score's value
SYMBOLS: dict[str, str] = {"cosine": "S", "logit": "logit", "probability": "p", "contrast": "ΔS", "itc": "S",
                           "itm": "p(match)"}

#: why the contrast has no text side
TEXT_CONTRAST = ("the contrast S(a) - S(b) has no word importance: captions a and b have separate tokens, so its "
                 "gradient with respect to caption a's words is the cosine's and with respect to caption b's the "
                 "cosine's negated, which score='cosine' already shows; explain each caption's cosine instead")


def check_score(score: Any) -> str:
    """``score`` when it is one of ``KNOWN_SCORES``; otherwise a ValueError naming the choices."""
    if score not in KNOWN_SCORES:
        raise ValueError(f"score must be one of {KNOWN_SCORES}, got {score!r}")
    return score


def check_count(score: str, count: int, what: str = "prompt", adapter: Any = None) -> None:
    """A ValueError, before any work, when ``count`` of ``what`` (a prompt, or a text of ``explain_text``)
    cannot carry ``score``: the probability among one is 1 whatever the input (not so a score of
    ``adapter``'s model that is not ``relative_score``, e.g. SigLIP's probability of each pair)."""
    if score == "probability" and count < 2 and relative_score(score, adapter):
        raise ValueError(f"score='probability' is each {what}'s softmax among the {what}s given: with a single {what} "
                         f"it is 1 whatever the input, so its map is identically zero; give two {what}s or more (or "
                         "explain the cosine or the logit)")


def others_logsumexp(logits: Tensor, dim: int = 0) -> Tensor:
    """log sum_{j != i} exp(logits_j) along ``dim`` for every i, without cancellation: from the log-sum-exp of
    all, log1p(-softmax_i) for every entry but the largest (whose softmax is at most 1/2 there), and the
    log-sum-exp of the others directly for the largest. -inf where there are no others."""
    total = torch.logsumexp(logits, dim, keepdim=True)
    rest = total + torch.log1p(-(logits - total).exp())
    top = logits.argmax(dim, keepdim=True)
    without_top = logits.scatter(dim, top, float("-inf"))
    return rest.scatter(dim, top, torch.logsumexp(without_top, dim, keepdim=True))


def cosine_gradients(embedding: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, T, D) d cos[n, t] / d embedding[n] = (t_t - cos[n, t] f_hat[n]) / |f[n]| (float32, no graph) of
    (N, D) embeddings against (T, D) unit rows, and the (N, T) cosines."""
    f = embedding.detach().float()
    cosines = cosine_scores(f, targets)
    norm = f.norm(dim=-1).clamp_min(1e-12)
    f_hat = f / norm[:, None]
    return (targets.float()[None] - cosines[..., None] * f_hat[:, None]) / norm[:, None, None], cosines


@dataclass(frozen=True, eq=False)
class ExplainedScore:
    """One explained score, resolved for a model: its ``name`` (one of ``SCORES``, or a model's own name for
    one of them: ``SCORE_ALIASES``, computed as that score, ``kind``), the model's logit
    ``scale`` (used by the logit and the probability) and, on the text side, ``rest`` (K, B): the
    log-sum-exp of the logits of the other captions given for each image (float64), when the method sees
    only some of them (``explain_text``'s chunks); without it the captions of the call are all of them.
    On the image side, ``columns``: the explained scores kept, of the K the target rows give (see the
    module docstring); None keeps all K."""

    name: str = DEFAULT_SCORE
    scale: float = 1.0
    rest: Tensor | None = None
    columns: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_score(self.name)
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(int(c) for c in self.columns))

    @property
    def relative(self) -> bool:
        """Whether the score of a target depends on the other targets given (the probability, a softmax among
        them): the text side then needs ``rest``, an image-side ``columns`` is computed among every row, and a
        single target is refused (``check_count``)."""
        return self.kind == "probability"

    @property
    def kind(self) -> str:
        """The score this one computes as: its ``name``, or the score a model's own name stands for
        (``SCORE_ALIASES``: BLIP's "itc" is the cosine)."""
        return SCORE_ALIASES.get(self.name, self.name)

    @property
    def rows(self) -> int:
        """Target rows per explained score: 2 for the contrast (a and b), else 1."""
        return 2 if self.kind == "contrast" else 1

    def count(self, rows: int) -> int:
        """The number of explained scores from ``rows`` target rows, or of the ``columns`` kept of them (a
        ValueError for an odd contrast, or a column that the rows do not give)."""
        if rows % self.rows:
            raise ValueError(f"score='contrast' takes its targets in pairs (a, b): got {rows} rows")
        count = rows // self.rows
        if self.columns is None:
            return count
        if not self.columns or not all(0 <= c < count for c in self.columns):
            raise ValueError(f"columns must be one or more of the {count} explained scores' indices, got "
                             f"{list(self.columns)}")
        return len(self.columns)

    def kept(self, values: Tensor, dim: int = -1) -> Tensor:
        """``values`` of every explained score along ``dim``, restricted to ``columns`` (as they are without)."""
        if self.columns is None:
            return values
        self.count(values.shape[dim] * self.rows)
        return values.index_select(dim, torch.tensor(self.columns, device=values.device))

    # ------------------------------------------------------------------------------------ image side
    def image_scores(self, embedding: Tensor, targets: Tensor) -> Tensor:
        """(B, D) image embeddings against (T, D) unit target rows -> (B, K) explained scores (float32), with
        the embedding's graph: ``of_images`` of their cosines."""
        return self.of_images(cosine_scores(embedding, targets))

    def embedding_gradients(self, embedding: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(N, K, D) float32 d S[n, k] / d embedding[n] in closed form, and the (N, K) scores, without a graph:
        the cosines' gradients (t - cos f_hat) / |f| combined by ``pull`` (Grad-ECLIP's K > D path)."""
        per_row, cosines = cosine_gradients(embedding, targets)
        return self.pull(per_row, cosines), self.of_images(cosines)

    def feature_gradients(self, embedding: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
        """(N, K, F) float32 d S[n, k] / d h[n] for an embedding that is a linear map of a feature h,
        embedding = h @ weight.T + b (``weight`` (D, F)): ``embedding_gradients`` times the weight."""
        return self.embedding_gradients(embedding, targets)[0] @ weight.float()

    def of_images(self, cosines: Tensor) -> Tensor:
        """(B, T) cosines of images against target rows -> (B, K) explained scores (float32; the cosines
        themselves for the cosine), or their ``columns``."""
        return self.kept(self._all_of_images(cosines))

    def _all_of_images(self, cosines: Tensor) -> Tensor:
        if self.kind == "cosine":
            return cosines
        if self.kind == "logit":
            return self.scale * cosines
        if self.kind == "probability":
            return torch.softmax(self.scale * cosines.double(), dim=-1).to(cosines.dtype)
        if cosines.shape[-1] % 2:
            raise ValueError(f"score='contrast' takes its targets in pairs (a, b): got {cosines.shape[-1]} rows")
        return cosines[..., 0::2] - cosines[..., 1::2]

    def pull(self, per_row: Tensor, cosines: Tensor) -> Tensor:
        """Gradients of the explained scores from the gradients of the cosines: ``per_row`` (N, T, ...)
        holds d cos[n, t] / d x[n], ``cosines`` (N, T) their values; returns (N, K, ...) d S[n, k] / d x[n],
        the combinations the cotangents of ``of_images`` make (the K > D path of Grad-ECLIP), or their
        ``columns``."""
        if self.kind == "cosine":
            return self.kept(per_row, dim=1)
        if self.kind == "logit":
            return self.scale * self.kept(per_row, dim=1)
        if self.kind == "contrast":
            return self.kept(per_row[:, 0::2] - per_row[:, 1::2], dim=1)
        p = torch.softmax(self.scale * cosines.detach().double(), dim=-1).to(per_row.dtype)  # (N, T)
        extra = (1,) * (per_row.ndim - 2)
        mean = (p.reshape(*p.shape, *extra) * per_row).sum(dim=1, keepdim=True)  # sum_t p_t grad_t
        return self.scale * self.kept(p.reshape(*p.shape, *extra), dim=1) * (self.kept(per_row, dim=1) - mean)

    # ------------------------------------------------------------------------------------- text side
    def of_texts(self, cosines: Tensor) -> Tensor:
        """(K, B) cosines of captions against images -> (K, B) explained scores, each entry a function of
        its own cosine (the other captions' logits held constant: ``rest``)."""
        if self.kind == "cosine":
            return cosines
        if self.kind == "logit":
            return self.scale * cosines
        if self.kind == "contrast":
            raise ValueError(TEXT_CONTRAST)
        logits = self.scale * cosines.double()
        return torch.sigmoid(logits - self.text_rest(cosines)).to(cosines.dtype)

    def text_rest(self, cosines: Tensor) -> Tensor:
        """``rest`` (K, B) for the (K, B) cosines of a text call (float64, no graph): as given, or from these
        cosines when the call's captions are all of them."""
        if self.rest is not None:
            return self.rest.to(device=cosines.device, dtype=torch.float64)
        return others_logsumexp(self.scale * cosines.detach().double(), dim=0)

    def pull_texts(self, per_entry: Tensor, cosines: Tensor) -> Tensor:
        """As ``pull`` for the text side: ``per_entry`` (K, B, ...) holds d cos[k, b] / d x[k]; each entry is
        scaled by d S[k, b] / d cos[k, b]."""
        if self.kind == "cosine":
            return per_entry
        with torch.enable_grad():
            c = cosines.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(self.of_texts(c).sum(), [c])  # entry-wise: the entries are independent
        return slope.reshape(*slope.shape, *(1,) * (per_entry.ndim - 2)).to(per_entry.dtype) * per_entry


#: the default: the cosine, as every method explained it before the setting existed
COSINE = ExplainedScore()


@dataclass(frozen=True, eq=False)
class ClassScore(ExplainedScore):
    """An image classifier's explained score (``CLASS_SCORES``): of its logits z (B, L), against target rows
    t (T, L) over its classes, the logit t . z or the probability t . softmax(z) over all L classes. No text
    side, no scale, one target row per score."""

    name: str = CLASS_SCORES[0]

    def __post_init__(self) -> None:
        if self.name not in CLASS_SCORES:
            raise ValueError(f"a classifier's score is one of {CLASS_SCORES}, got {self.name!r}")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(int(c) for c in self.columns))

    @property
    def relative(self) -> bool:
        """A class's probability is the softmax over all the classifier's classes, not among the targets given:
        one class has a probability too, whatever rows the call holds."""
        return False

    def image_scores(self, embedding: Tensor, targets: Tensor) -> Tensor:
        if self.name == "logit":
            return self.kept(embedding.float() @ targets.float().T)
        # the softmax (and so its backward, p (g - g . p)) in float64: a probability close to 1 keeps its p (1 - p);
        # the rows in float32, so that K cotangents do not each pull a float64 (K, L) product
        return self.kept(torch.softmax(embedding.double(), dim=-1).float() @ targets.float().T)

    def embedding_gradients(self, embedding: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """d S / d z: t for the logit; p * t - (t . p) p for the probability (the softmax's Jacobian)."""
        z = embedding.detach()
        targets = targets if self.columns is None else targets[list(self.columns)]  # the kept columns' rows
        rows = targets.float()[None].expand(z.shape[0], -1, -1)
        if self.name == "logit":
            return rows.contiguous(), z.float() @ targets.float().T
        p = torch.softmax(z.double(), dim=-1)  # (N, L)
        scores = p @ targets.double().T  # (N, K)
        grads = p[:, None, :] * targets.double()[None] - scores[..., None] * p[:, None, :]
        return grads.float(), scores.float()

    def feature_gradients(self, embedding: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
        """d S / d h of logits z = W h + b: t W for the logit (the same for every image); p_t W_t - (t . p) p W
        for the probability, with p_t W_t the rows of W weighted by p (in float64, like the probability's
        ``embedding_gradients``). Target rows with one nonzero entry each (class k's e_k) take rows of W
        instead of a (K, L) x (L, F) product."""
        z = embedding.detach()
        targets = targets if self.columns is None else targets[list(self.columns)]
        dtype = torch.float32 if self.name == "logit" else torch.float64
        t, w = targets.to(dtype), weight.to(dtype)
        index = _single_entries(t)
        if self.name == "logit":
            rows = t @ w if index is None else t.gather(1, index[:, None]) * w[index]
            return rows[None].expand(z.shape[0], -1, -1)
        p = torch.softmax(z.double(), dim=-1)  # (N, L)
        if index is None:
            weighted = torch.stack([(t * p_n) @ w for p_n in p])  # (N, K, F): (t * p_n) W
        else:  # t_k's one entry at index_k: (t * p_n) W = t_k p_n[index_k] W[index_k]
            weighted = (t.gather(1, index[:, None]) * w[index])[None] * p[:, index, None]
        grads = weighted - (p @ t.T)[..., None] * (p @ w)[:, None, :]
        return grads.float()

    def of_images(self, cosines: Tensor) -> Tensor:
        raise TypeError("a classifier's scores are functions of its logits, not of cosines: use image_scores")

    def of_texts(self, cosines: Tensor) -> Tensor:
        raise ValueError("an image classifier has no text side")


def _single_entries(rows: Tensor) -> Tensor | None:
    """Where every (K, L) row has at most one nonzero entry (one-hot targets): each row's column of it (any
    column for a zero row), so that a product with the rows is a gather; else None."""
    nonzero = rows != 0
    if not bool((nonzero.sum(dim=-1) <= 1).all()):
        return None
    return nonzero.to(torch.int8).argmax(dim=-1)


@dataclass(frozen=True, eq=False)
class SigmoidScore(ExplainedScore):
    """The scores of a model trained with a sigmoid loss (SigLIP), each image-text pair scored on its own
    (``SIGMOID_SCORES``): the logit s cos + b, s the model's logit scale (exp of its learnt ``logit_scale``)
    and b its learnt ``bias``, or the probability sigmoid(s cos + b) that the pair matches, which does not
    depend on the other prompts given (no softmax over them: one prompt has a probability too, and the
    text side needs no ``rest``). The logit's gradient is s times the cosine's; the probability's is
    s p (1 - p) times the cosine's, computed as exp(logsigmoid(x)) in float64 so that its backward,
    p sigmoid(-x), keeps 1 - p where p rounds to 1 (a matching pair's logit above about 17 in float32, 37
    in float64), and p itself down to about 1e-300. The cosine and the contrast are a CLIP's
    (``ExplainedScore``), which the model's adapter builds for those names."""

    name: str = "logit"
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SIGMOID_SCORES:
            raise ValueError(f"a sigmoid score is one of {SIGMOID_SCORES}, got {self.name!r}")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(int(c) for c in self.columns))

    @property
    def relative(self) -> bool:
        return False

    def _of(self, cosines: Tensor) -> Tensor:
        logits = self.scale * cosines.double() + self.bias
        if self.name == "logit":
            return logits.to(cosines.dtype)
        return torch.exp(torch.nn.functional.logsigmoid(logits)).to(cosines.dtype)

    def _all_of_images(self, cosines: Tensor) -> Tensor:
        return self._of(cosines)

    def pull(self, per_row: Tensor, cosines: Tensor) -> Tensor:
        """``per_row`` (N, T, ...) scaled by d S / d cos: s for the logit, s p (1 - p) for the probability."""
        if self.name == "logit":
            return self.scale * self.kept(per_row, dim=1)
        logits = self.scale * cosines.detach().double() + self.bias
        slope = self.scale * torch.sigmoid(logits) * torch.sigmoid(-logits)  # p (1 - p) without 1 - p rounding
        slope = self.kept(slope, dim=1).to(per_row.dtype)
        return slope.reshape(*slope.shape, *(1,) * (per_row.ndim - 2)) * self.kept(per_row, dim=1)

    def of_texts(self, cosines: Tensor) -> Tensor:
        return self._of(cosines)

    def text_rest(self, cosines: Tensor) -> Tensor:
        raise TypeError("a sigmoid score scores each pair on its own: it has no other captions' rest")


@dataclass(frozen=True, eq=False)
class MatchScore(ExplainedScore):
    """A score of an image and a caption's tokens together (``MATCH_SCORES``: BLIP's image-text matching
    probability). It is no function of embeddings: its targets are the captions' token ids, and the methods
    that declare it (``itm_gradcam``) compute it through the adapter (``match_trace``); the functions of
    cosines and logits are errors."""

    name: str = MATCH_SCORES[0]

    def __post_init__(self) -> None:
        if self.name not in MATCH_SCORES:
            raise ValueError(f"a match score is one of {MATCH_SCORES}, got {self.name!r}")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(int(c) for c in self.columns))

    def _refuse(self, *_: Any) -> Tensor:
        raise TypeError(f"score={self.name!r} is computed from an image and a caption's tokens together (the "
                        f"model's matching head), not from embeddings: {SCORE_REASONS.get(self.name, '')}")

    image_scores = embedding_gradients = of_images = pull = of_texts = pull_texts = _refuse


def is_classifier(adapter: Any) -> bool:
    """Whether ``adapter`` explains an image classifier (its embedding is its logits, its targets classes)."""
    return bool(getattr(adapter, "is_classifier", False))


def model_scores(adapter: Any) -> tuple[str, ...]:
    """The scores ``adapter``'s model gives, its default first: its own ``score_names`` (a classifier's
    ``CLASS_SCORES``), else a CLIP's ``SCORES``."""
    own = getattr(adapter, "score_names", None)
    return tuple(own) if own else SCORES


def default_score(adapter: Any) -> str:
    """The score a model explains by default: the cosine for a CLIP, the logit for a classifier."""
    return model_scores(adapter)[0]


def score_name(adapter: Any, score: str = DEFAULT_SCORE) -> str:
    """The score ``adapter``'s model gives for ``score``: ``score`` itself, except that the default named (the
    cosine) stands for the own default of a model that declares its own scores (a classifier's logit), as
    ``explained_score`` resolves it; the scores of a method that explains no score are the model's default."""
    own = model_scores(adapter)
    return own[0] if score == DEFAULT_SCORE and own != SCORES and DEFAULT_SCORE not in own else score


def own_scores(adapter: Any, embedding: Tensor, targets: Tensor) -> Tensor:
    """The (B, K) scores of a method that explains no score: the model's default score (the cosines of a
    CLIP, the logits of a classifier) of the (B, D) embeddings against the (K, D) targets."""
    return explained_score(default_score(adapter), adapter).image_scores(embedding, targets)


def relative_score(score: str, adapter: Any = None) -> bool:
    """Whether the score named ``score`` of ``adapter``'s model depends on the other targets given
    (``ExplainedScore.relative``: a CLIP's probability, the softmax among them); for a model that declares
    its own scores, as its adapter builds them (a score it does not give: False, its refusal comes first)."""
    names = model_scores(adapter)
    if names == SCORES:
        return score == "probability"
    return score in names and adapter.make_score(score).relative


def has_logit_scale(adapter: Any) -> bool:
    """Whether ``adapter``'s model carries a logit scale (a stand-in adapter that does not say is taken to)."""
    return bool(getattr(adapter, "has_logit_scale", True))


def scale_refusal(score: str, adapter: Any) -> str | None:
    """Why ``adapter``'s model cannot give ``score``: None, unless ``score`` is not one of the model's scores
    (its own, or a CLIP's ``SCORES``; a score one of its own names stands for, ``SCORE_ALIASES``, is one of them:
    BLIP's "itc" is the cosine) (the message names the family, its scores and its ``score_note``), or the
    score needs the logit scale and the model carries none (the message names the score and the family)."""
    names = model_scores(adapter)
    if names != SCORES or score not in names:
        if score in names or any(SCORE_ALIASES.get(name) == score for name in names):  # BLIP's "itc" is the cosine
            return None
        kind = "an image classifier" if is_classifier(adapter) else "this model"
        return score_refusal_text(score, kind, getattr(adapter, "family", "model"), names, getattr(adapter, "score_note", ""))
    if score in SCALED and not has_logit_scale(adapter):
        return (f"score={score!r} needs the model's logit scale (exp of its learnt logit_scale), which this "
                f"{getattr(adapter, 'family', 'CLIP')} model does not carry (a Hugging Face vision/text pair keeps it "
                "in the CLIPModel it came from: load that instead); explain the cosine or the contrast")
    return None


def own_logit_scale(adapter: Any) -> float:
    """What turns the model's own scores (``own_scores``) into its class logits: a CLIP's logit scale (its
    logits are s x its cosines), 1 for a classifier (its own scores are its logits)."""
    return 1.0 if is_classifier(adapter) else float(adapter.logit_scale)


def own_probabilities(adapter: Any, embedding: Tensor, targets: Tensor) -> Tensor | None:
    """A classifier's (B, K) probabilities of the K target rows, the softmax over all its classes (float32);
    None for a CLIP, whose class probability is the softmax of s x its cosines among the targets given."""
    if not is_classifier(adapter):
        return None
    return ClassScore("probability").image_scores(embedding, targets)


def explained_score(score: str | ExplainedScore = DEFAULT_SCORE, adapter: Any = None,
                    rest: Tensor | None = None, columns: Sequence[int] | None = None) -> ExplainedScore:
    """``score`` resolved for ``adapter``'s model: an ``ExplainedScore`` as it is, or a name with the model's
    logit scale (``rest``, ``columns``: see ``ExplainedScore``). A score that needs a logit scale the model
    does not carry is an ``UnsupportedMethodError`` naming the score and the family. A model that declares
    its own scores (``CLIPAdapter.score_names``: a classifier's) gets its adapter's ``make_score``, the
    default score named (the cosine) standing for the model's own default (a classifier's logit) where the
    model does not give the cosine."""
    if isinstance(score, ExplainedScore):
        return score
    kept = None if columns is None else tuple(columns)
    if model_scores(adapter) != SCORES:  # the model's own scores, built by its adapter
        score = score_name(adapter, score)
        reason = scale_refusal(score, adapter)
        if reason is not None:
            raise UnsupportedMethodError(reason)
        return adapter.make_score(score, rest=rest, columns=kept)
    check_score(score)
    if score == DEFAULT_SCORE and rest is None and columns is None:
        return COSINE
    reason = scale_refusal(score, adapter)
    if reason is not None:
        raise UnsupportedMethodError(reason)
    scale = float(getattr(adapter, "logit_scale", 1.0)) if adapter is not None else 1.0
    return ExplainedScore(score, scale, rest, kept)


__all__ = ["CLASS_SCORES", "COSINE", "DEFAULT_SCORE", "KNOWN_SCORES", "MATCH_SCORES", "SCALED", "SCORES",
           "SCORE_ALIASES", "SCORE_REASONS", "SIGMOID_SCORES", "SYMBOLS", "TEXT_CONTRAST", "ClassScore", "ExplainedScore",
           "MatchScore", "SigmoidScore", "check_count", "check_score", "cosine_gradients", "default_score",
           "explained_score", "has_logit_scale", "is_classifier", "model_scores", "others_logsumexp", "own_logit_scale",
           "own_probabilities", "own_scores", "relative_score", "scale_refusal", "score_name"]
