"""What a model-family adapter captures, and the interface every adapter implements.

An adapter is the only code that reaches inside a CLIP implementation (or an image classifier's). It runs an
encoder tower forward and captures, for the blocks it is asked to explain, the attention internals the methods
need: the in-projected queries, keys and values, the attention output before the output projection, and the row of
that output at the pooled token as a tensor the embedding can be differentiated against. Methods are functions over
these captures.

An adapter is an image tower and a text tower (``ImageTower``, ``TextTower``) behind one
``CLIPAdapter``. The towers that are transformers share one engine (``transformer.py``); a family's
file only says where its pieces are (which modules are the norms, projections and blocks). A new
model family is one new file that builds its towers and is listed in the registry.

A tower declares what it can capture for the methods (``captures``, names from ``CAPTURES``) and, in its
own words, why it lacks the others (``lacking``); a method declares what it requires (its ``MethodSpec``
in ``methods/``), and a method whose requirement a tower lacks is refused with that reason before it
runs. No adapter names the methods it refuses. A model without a text tower (an image classifier,
``classifier.py``) has ``text`` None: every text method is refused for it, with that reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import GradEclipError

Mode = Literal["faithful", "official"]
MODES: tuple[str, ...] = ("faithful", "official")


class UnsupportedModelError(GradEclipError, TypeError):
    """Raised early when no adapter knows the model family (or a feature of the model)."""


class UnsupportedMethodError(GradEclipError, NotImplementedError):
    """Raised when a method needs something that a model family does not have (the error names both)."""


#: what a tower may capture or compute for the methods beyond a plain trace with the blocks' q, k, v and
#: attention outputs, each with what a tower that lacks it does not do (the reason a tower gives unless it
#: says more in its ``lacking``)
CAPTURES: dict[str, str] = {
    "probs": "keep its attention probabilities",
    "block_inputs": "keep the tokens entering a block",
    "block_outputs": "keep the tokens leaving a block",
    "final_tokens": "keep the tokens leaving its last block",
    "token_head": "expose a head that applies to every token",
    "intermediate_tokens": "expose intermediate tokens and resume from them",
    "value_path": "have a value path for dense features",
    "vv_attention": "support CLIP Surgery's v-v attention path",
    "parameter_groups": "list its parameters by depth",
    "joint_space": "map its tokens into the space of its targets (text embeddings) to compare them there",
    "cross_attention": "feed its tokens to a text encoder's cross-attention (it has no image-text matching head)",
}


@dataclass
class BlockCapture:
    """Internals of one explained attention block, batch first.

    ``q``, ``k``, ``v`` and ``attn_output`` are (B, N, C) and detached; ``token_output`` is the
    (B, C) row of the attention output (before the output projection) at the pooled token, attached
    to the graph so that the embedding can be differentiated with respect to it. ``probs`` (B, H, N, N)
    is kept, with its graph, only when asked for. ``block_input`` is the (B, N, C) residual stream
    entering the block, when asked for, attached to the graph (Grad-CAM differentiates with respect to
    it), and ``out_proj`` the block's output projection (weight, bias).
    """

    layer: int
    q: Tensor
    k: Tensor
    v: Tensor
    attn_output: Tensor
    token_output: Tensor
    heads: int
    out_proj_weight: Tensor
    out_proj_bias: Tensor | None
    probs: Tensor | None = None
    block_input: Tensor | None = None


@dataclass
class LinearHead:
    """A tower whose embedding is a linear map of a narrower feature: embedding = feature @ weight.T + bias.

    ``feature`` (B, F) carries the graph (the embedding is computed from it); ``weight`` (D, F) is detached.
    An image classifier's logits are its head applied to the normalised class token (F the width, D the
    classes): where F < D, a Jacobian of the embedding with respect to a capture costs F cotangents on the
    feature instead of D on the embedding (Grad-ECLIP's channel weights for more targets than F).
    """

    feature: Tensor
    weight: Tensor


@dataclass
class TowerTrace:
    """One forward pass of an encoder tower with its captures.

    ``embedding`` (B, D) is the tower's output embedding (unnormalised) with its graph;
    ``token_index`` (B,) the position of the pooled token (class token: 0; text: the EOS position);
    ``blocks`` maps absolute block indices to their captures; ``grid`` is the (h, w) patch grid for
    images; ``final_tokens`` (B, N, C) are the tokens after the last block when asked for;
    ``block_outputs`` maps each explained block's index to the (B, N, C) tokens leaving it (all rows,
    with their graph) when asked for (``keep_block_outputs``); ``linear_head``, where the tower declares
    one, the feature the embedding is a linear map of (``LinearHead``).
    """

    embedding: Tensor
    token_index: Tensor
    blocks: dict[int, BlockCapture] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    final_tokens: Tensor | None = None
    block_outputs: dict[int, Tensor] = field(default_factory=dict)
    linear_head: LinearHead | None = None


@dataclass
class BlockSteps:
    """A tower's forward one explained block at a time, for methods that fold each block's attention
    into a running result instead of holding every block's at once (rollout, GAME).

    ``tokens`` (B, N, C) are the tokens entering block ``first``, without a graph. ``step(block, x)``
    runs block ``block`` on tokens ``x`` as ``trace`` computes an explained block in faithful mode (the
    same numbers) and returns the tokens leaving it, or for the tower's last block its embedding (B, D),
    and the block's attention probabilities (B, H, N, N); both with their graph to ``x`` when gradients
    are enabled. Running the blocks from ``first`` to the last block, each on the previous one's output,
    is the tower's forward. ``token_index`` (B,) is the pooled position, ``grid`` the patch grid of images.
    """

    tokens: Tensor
    first: int
    step: Callable[[int, Tensor], tuple[Tensor, Tensor]]
    token_index: Tensor
    grid: tuple[int, int] | None = None


class _Tower(ABC):
    """What the image and the text towers have in common."""

    #: a human-readable name of the tower's kind, for error messages ("ViT", "ResNet attention pool")
    kind: str = "tower"
    #: what the tower captures for the methods (names from ``CAPTURES``); a method that requires another is refused
    captures: frozenset[str] = frozenset()
    #: why the tower lacks some of the others, in its own words (capture -> reason)
    lacking: Mapping[str, str] = {}

    @property
    @abstractmethod
    def num_blocks(self) -> int: ...

    @abstractmethod
    def weight(self) -> Tensor:
        """A parameter whose dtype and device are the tower's (its first weight)."""

    @property
    def dtype(self) -> torch.dtype:
        return self.weight().dtype

    @property
    def device(self) -> torch.device:
        return self.weight().device

    def block_shape(self) -> tuple[int, int]:
        """(width, heads) of the tower's attention blocks, as memory estimates read them (``budget.py``); by
        default the first dimension of ``weight()`` and one head per 64 channels."""
        width = int(self.weight().shape[0])
        return width, max(1, width // 64)

    def missing(self, capture: str) -> str:
        """Why the tower cannot give ``capture`` (a name from ``CAPTURES``)."""
        return self.lacking.get(capture) or f"the {self.kind} tower does not {CAPTURES[capture]}"

    def _missing(self, capture: str) -> NotImplementedError:
        return UnsupportedMethodError(self.missing(capture))


class ImageTower(_Tower):
    """An image encoder as the methods see it. The optional capabilities at the end serve baselines;
    a tower declares those it has in ``captures``, and one that lacks one raises
    ``UnsupportedMethodError`` saying what it lacks (``missing``)."""

    @property
    @abstractmethod
    def patch_size(self) -> tuple[int, int]:
        """The stride between grid cells in pixels (the patch size of a ViT, 32 for a ResNet)."""

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def embed_dim(self) -> int: ...

    @abstractmethod
    def trace(self, pixels: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
              keep_block_inputs: bool = False, keep_final_tokens: bool = False,
              keep_block_outputs: bool = False) -> TowerTrace:
        """Run on (B, 3, H, W) pixels, capturing the given (absolute) blocks."""

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        return self.trace(pixels, []).embedding

    def trunk_map(self) -> tuple[int, int] | None:
        """(channels, stride) of the largest feature map a convolutional trunk computes before the explained
        blocks (a ResNet's first stage), for memory estimates (``budget.py``); None where the blocks are the
        trunk (a ViT)."""
        return None

    def check_pixels(self, pixels: Tensor) -> tuple[int, int]:
        """The grid of (B, 3, H, W) pixels whose sides are positive multiples of the patch size."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        ph, pw = self.patch_size
        height, width = pixels.shape[-2:]
        if height % ph or width % pw or height < ph or width < pw:
            raise ValueError(
                f"image size {height}x{width} is not a positive multiple of the patch size {ph}x{pw}")
        return height // ph, width // pw

    def head(self, tokens: Tensor) -> Tensor:
        raise self._missing("token_head")

    def tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        raise self._missing("intermediate_tokens")

    def embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        raise self._missing("intermediate_tokens")

    def steps(self, pixels: Tensor, first: int) -> BlockSteps:
        """The forward on (B, 3, H, W) pixels from block ``first`` on, one block at a time."""
        raise self._missing("run its blocks one at a time")

    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        raise self._missing("value_path")

    def surgery_features(self, pixels: Tensor, depth: int) -> tuple[Tensor, Tensor, Tensor]:
        raise self._missing("vv_attention")

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        raise self._missing("parameter_groups")


class TextTower(_Tower):
    """A text encoder as the methods see it."""

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @abstractmethod
    def token_index(self, tokens: Tensor) -> Tensor:
        """Position of the pooled (EOS) token of each sequence, as the model pools it."""

    def word_end(self, tokens: Tensor) -> Tensor:
        """Position of each sequence's end token: its words lie between its start token and it. A CLIP pools
        at its end token (``token_index``); a BERT-style tower pooled at its first token says where its end is."""
        return self.token_index(tokens)

    @abstractmethod
    def trace(self, tokens: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
              keep_block_inputs: bool = False, keep_final_tokens: bool = False,
              keep_block_outputs: bool = False) -> TowerTrace:
        """Run on (K, L) token ids, capturing the given (absolute) blocks."""

    @torch.no_grad()
    def encode(self, tokens: Tensor) -> Tensor:
        return self.trace(tokens, []).embedding

    def tokens_before(self, tokens: Tensor, block: int) -> Tensor:
        raise self._missing("intermediate_tokens")

    def embedding_from(self, hidden: Tensor, tokens: Tensor, block: int) -> Tensor:
        raise self._missing("intermediate_tokens")

    def steps(self, tokens: Tensor, first: int) -> BlockSteps:
        """The forward on (K, L) token ids from block ``first`` on, one block at a time."""
        raise self._missing("run its blocks one at a time")


def score_refusal_text(score: str, kind: str, family: str, names: Sequence[str], note: str = "") -> str:
    """Why a model of ``family`` (``kind``: "an image classifier", ...) refuses ``score``: it gives only ``names``
    (``note``: why)."""
    given = ", ".join(repr(n) for n in names)
    return f"score={score!r} is not a score of {kind} ({family}): it gives {given}" + (f"; {note}" if note else "")


class CLIPAdapter:
    """Interface between one CLIP model and the explanation methods: an image tower and a text tower.

    ``family`` names the model family ("open_clip ViT", "Hugging Face CLIP", "OpenAI clip ResNet", ...);
    results and manifests record it. Every method of the interface delegates to one tower.
    ``native_image`` / ``native_text`` call the model's own public forward (``encode_image``,
    ``get_image_features``, ...): what users compare against, and the baseline of the benchmarks.
    """

    #: whether the model is an image classifier (``classifier.ClassifierAdapter``): its embedding is its logits
    #: and its targets are its classes
    is_classifier: bool = False
    #: the names of the scores the model gives, its default first (``methods/scores.py``); None: a CLIP's
    #: ``scores.SCORES`` (the cosine first). A family whose scores differ declares them here and builds them
    #: in ``make_score``
    score_names: tuple[str, ...] | None = None
    #: why the model gives only ``score_names`` (ends the refusal of any other score)
    score_note: str = ""

    def make_score(self, name: str, *, rest: Tensor | None = None, columns: Sequence[int] | None = None):
        """The explained score ``name`` of this model (a ``methods.scores.ExplainedScore``), or None for a
        CLIP's own (the cosine, the logit and the probability at its logit scale, the contrast), which
        ``scores.explained_score`` builds. ``name`` is one of ``score_names``."""
        return None

    def default_preprocess(self) -> Callable:
        """The preprocessing ``wrap_model`` gives the model when none is passed: CLIP's (resize of the short side,
        centre crop, CLIP's mean and std) at the model's image size."""
        import open_clip

        from ..checkpoints import CLIP_MEAN, CLIP_STD

        return open_clip.image_transform(self.image_size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)

    def own_tokenizer(self, tokenizer: Callable | None) -> Callable | None:
        """A tokenizer passed for the model, as its text tower takes its ids (then checked, ``text.checked_tokenizer``,
        which wraps a Hugging Face tokenizer as CLIP's); as it is, unless a family pads or marks its texts otherwise.
        None (none passed): the model's own default, None for open_clip's bundled CLIP tokenizer."""
        return tokenizer

    def __init__(self, model: nn.Module, image: ImageTower, text: TextTower | None, family: str, *,
                 native_image: Callable[[Tensor], Tensor], native_text: Callable[[Tensor], Tensor] | None,
                 logit_scale: Tensor | None = None) -> None:
        self.model, self.image, self.text, self.family = model, image, text, family
        self._native_image, self._native_text = native_image, native_text
        self._logit_scale = logit_scale

    def _text(self) -> TextTower:
        """The text tower; an ``UnsupportedMethodError`` naming the family for a model that has none."""
        if self.text is None:
            raise UnsupportedMethodError(f"{self.family} models have no text tower")
        return self.text

    #: the temperature CLIP models end their training at (exp of the learnt logit scale)
    DEFAULT_LOGIT_SCALE = 100.0

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale): what turns the model's cosines into its logits; 100 (CLIP's trained value)
        for a model that carries none (a Hugging Face vision/text pair)."""
        if self._logit_scale is None:
            return self.DEFAULT_LOGIT_SCALE
        return float(self._logit_scale.detach().float().exp())

    @property
    def has_logit_scale(self) -> bool:
        """Whether the model carries its own logit scale (the scores "logit" and "probability" need it;
        ``logit_scale`` falls back to 100 for a model without one, which GAME's default uses)."""
        return self._logit_scale is not None

    def __repr__(self) -> str:
        text = "no text tower" if self.text is None else f"{self.num_text_blocks} text blocks"
        return f"<{type(self).__name__} {self.family}: {self.num_image_blocks} image blocks / {text}>"

    # ----------------------------------------------------------------------------------- geometry
    @property
    def num_image_blocks(self) -> int:
        return self.image.num_blocks

    @property
    def num_text_blocks(self) -> int:
        return self._text().num_blocks

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.image.patch_size

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.image_size

    @property
    def embed_dim(self) -> int:
        return self.image.embed_dim

    @property
    def context_length(self) -> int:
        return self._text().context_length

    @property
    def dtype(self) -> torch.dtype:
        return self.image.dtype

    @property
    def device(self) -> torch.device:
        return self.image.device

    # ------------------------------------------------------------------------------------ towers
    def trace_image(self, pixels: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
                    keep_block_inputs: bool = False, keep_final_tokens: bool = False,
                    keep_block_outputs: bool = False) -> TowerTrace:
        """Run the image tower on (B, 3, H, W) pixels, capturing the given (absolute) blocks."""
        return self.image.trace(pixels, layers, mode=mode, keep_probs=keep_probs,
                                keep_block_inputs=keep_block_inputs, keep_final_tokens=keep_final_tokens,
                                keep_block_outputs=keep_block_outputs)

    def trace_text(self, tokens: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
                   keep_block_inputs: bool = False, keep_final_tokens: bool = False,
                   keep_block_outputs: bool = False) -> TowerTrace:
        """Run the text tower on (K, L) token ids, capturing the given (absolute) blocks."""
        return self._text().trace(tokens, layers, mode=mode, keep_probs=keep_probs,
                               keep_block_inputs=keep_block_inputs, keep_final_tokens=keep_final_tokens,
                               keep_block_outputs=keep_block_outputs)

    def encode_image(self, pixels: Tensor) -> Tensor:
        """The model's own image embedding (unnormalised), without a graph."""
        return self.image.encode(pixels)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """The model's own text embedding (unnormalised), without a graph."""
        return self._text().encode(tokens)

    def text_token_index(self, tokens: Tensor) -> Tensor:
        return self._text().token_index(tokens)

    def text_word_end(self, tokens: Tensor) -> Tensor:
        """Position of each sequence's end token (its words lie between its start token and it)."""
        return self._text().word_end(tokens)

    @torch.no_grad()
    def native_encode_image(self, pixels: Tensor) -> Tensor:
        """The image embedding from the model's own forward (at the model's own image size, where a
        family's forward accepts no other), without a graph."""
        return self._native_image(pixels.to(device=self.device, dtype=self.dtype))

    @torch.no_grad()
    def native_encode_text(self, tokens: Tensor) -> Tensor:
        """The text embedding from the model's own forward, without a graph."""
        return self._native_text(tokens.to(self._text().device))

    def resolve_layers(self, layers: int | Sequence[int], tower: Literal["image", "text"]) -> list[int]:
        """Turn ``layers`` into sorted absolute block indices.

        An int n means the last n blocks (all blocks when the tower has fewer than n); a sequence
        holds block indices, negative ones counted from the end (-1 is the last block).
        """
        total = self.num_image_blocks if tower == "image" else self.num_text_blocks
        if isinstance(layers, bool):
            raise TypeError("layers must be an int (the last n blocks) or a sequence of block indices")
        if isinstance(layers, int):
            if layers < 1:
                raise ValueError(f"layers={layers}: ask for at least the last block (layers=1)")
            return list(range(max(0, total - layers), total))
        resolved = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"layer indices must be ints, got {layer!r}")
            if not -total <= layer < total:
                raise ValueError(f"layer {layer} is out of range for the {tower} tower's {total} blocks")
            resolved.append(layer % total)
        if not resolved:
            raise ValueError("layers is empty: name at least one block")
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"layers {list(layers)} name the same block twice")
        return sorted(resolved)

    # ------------------------------------------------------------------ optional: for the baselines
    def image_head(self, tokens: Tensor) -> Tensor:
        """The image tower's head (final norm and projection) applied to any (..., C) tokens."""
        return self.image.head(tokens)

    def image_tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        """Tokens (B, N, C) entering image block ``block`` (``num_image_blocks``: after the last one),
        without a graph, and the patch grid."""
        return self.image.tokens_before(pixels, block)

    def image_embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        """Image embedding (B, D) from tokens entering block ``block``, with a graph to ``tokens``."""
        return self.image.embedding_from(tokens, block)

    def text_tokens_before(self, tokens: Tensor, block: int) -> Tensor:
        """Hidden states (K, L, C) entering text block ``block``, without a graph."""
        return self._text().tokens_before(tokens, block)

    def text_embedding_from(self, hidden: Tensor, tokens: Tensor, block: int) -> Tensor:
        """Text embedding (K, D) from hidden states entering block ``block`` of the sequences ``tokens``."""
        return self._text().embedding_from(hidden, tokens, block)

    def image_steps(self, pixels: Tensor, first: int) -> BlockSteps:
        """The image tower's forward on (B, 3, H, W) pixels from (absolute) block ``first`` on, one block
        at a time (``BlockSteps``): what a method that folds one block's attention at a time runs on."""
        return self.image.steps(pixels, check_block_index(first, self.num_image_blocks - 1))

    def text_steps(self, tokens: Tensor, first: int) -> BlockSteps:
        """The text tower's forward on (K, L) token ids from (absolute) block ``first`` on, one block at a time."""
        return self._text().steps(tokens, check_block_index(first, self.num_text_blocks - 1))

    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """MaskCLIP's dense features: (embedding (B, D), patch features (B, P, D)) where the last block's
        attention is replaced by its value path."""
        return self.image.value_path_features(pixels)

    def surgery_features(self, pixels: Tensor, depth: int) -> tuple[Tensor, Tensor, Tensor]:
        """CLIP Surgery's dense features: (the model's embedding (B, D), the class feature the feature
        surgery weighs the prompts with (B, D), patch features (B, P, D)) from a parallel v-v attention
        path through the last ``depth`` blocks. On ViTs the class feature is the embedding (the original
        path's class token); on ResNets, whose pool the authors replace as a whole, the v-v pool's."""
        return self.image.surgery_features(pixels, depth)

    def image_parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The image tower's parameters in groups from the top (head) down to the input embedding,
        for the cascading randomisation sanity check."""
        return self.image.parameter_groups()


def check_block_index(block: int, total: int) -> int:
    """``block`` as an int in [0, total] (``total``: after the last block), or a ValueError."""
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= total:
        raise ValueError(f"block must be an int in [0, {total}], got {block!r}")
    return block
