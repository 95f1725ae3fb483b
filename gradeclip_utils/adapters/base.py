"""What a model-family adapter captures, and the interface every adapter implements.

An adapter is the only code that reaches inside a CLIP implementation. It runs an encoder tower
forward and captures, for the blocks it is asked to explain, the attention internals the methods
need: the in-projected queries, keys and values, the attention output before the output projection,
and the row of that output at the pooled token as a tensor the embedding can be differentiated
against. Methods are functions over these captures; a new model family is one new adapter file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import Tensor

Mode = Literal["faithful", "official"]
MODES: tuple[str, ...] = ("faithful", "official")


class UnsupportedModelError(TypeError):
    """Raised early when no adapter knows the model family."""


@dataclass
class BlockCapture:
    """Internals of one explained attention block, batch first.

    ``q``, ``k``, ``v`` and ``attn_output`` are (B, N, C) and detached; ``token_output`` is the
    (B, C) row of the attention output (before the output projection) at the pooled token, attached
    to the graph so that the embedding can be differentiated with respect to it. ``probs`` (B, H, N, N)
    is kept, with its graph, only when asked for. ``block_input`` is the (B, N, C) residual stream
    entering the block (detached) and ``out_proj`` the block's output projection (weight, bias).
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
class TowerTrace:
    """One forward pass of an encoder tower with its captures.

    ``embedding`` (B, D) is the tower's output embedding (unnormalised) with its graph;
    ``token_index`` (B,) the position of the pooled token (class token: 0; text: the EOS position);
    ``blocks`` maps absolute block indices to their captures; ``grid`` is the (h, w) patch grid for
    images; ``final_tokens`` (B, N, C) are the tokens after the last block when asked for;
    ``block_outputs`` maps each explained block's index to the (B, N, C) tokens leaving it (all rows,
    with their graph) when asked for (``keep_block_outputs``).
    """

    embedding: Tensor
    token_index: Tensor
    blocks: dict[int, BlockCapture] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    final_tokens: Tensor | None = None
    block_outputs: dict[int, Tensor] = field(default_factory=dict)


class CLIPAdapter(ABC):
    """Interface between one CLIP family and the explanation methods."""

    family: str = "abstract"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @classmethod
    @abstractmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        """Whether this adapter can explain ``model``."""

    @property
    @abstractmethod
    def num_image_blocks(self) -> int: ...

    @property
    @abstractmethod
    def num_text_blocks(self) -> int: ...

    @property
    @abstractmethod
    def patch_size(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def embed_dim(self) -> int: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @abstractmethod
    def trace_image(
        self,
        pixels: Tensor,
        layers: Sequence[int],
        *,
        mode: Mode = "faithful",
        keep_probs: bool = False,
        keep_block_inputs: bool = False,
        keep_final_tokens: bool = False,
        keep_block_outputs: bool = False,
    ) -> TowerTrace:
        """Run the image tower on (B, 3, H, W) pixels, capturing the given (absolute) blocks."""

    @abstractmethod
    def trace_text(
        self,
        tokens: Tensor,
        layers: Sequence[int],
        *,
        mode: Mode = "faithful",
        keep_probs: bool = False,
        keep_block_inputs: bool = False,
        keep_final_tokens: bool = False,
        keep_block_outputs: bool = False,
    ) -> TowerTrace:
        """Run the text tower on (K, L) token ids, capturing the given (absolute) blocks."""

    @abstractmethod
    def encode_image(self, pixels: Tensor) -> Tensor:
        """The model's own image embedding (unnormalised), without a graph."""

    @abstractmethod
    def encode_text(self, tokens: Tensor) -> Tensor:
        """The model's own text embedding (unnormalised), without a graph."""

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
    # Families that do not implement one of these simply do not support the baselines that need it.

    @property
    def logit_scale(self) -> float:
        """The multiplier of the cosine in the model's image-text logits (exp of the learned logit scale)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its logit scale")

    def image_head(self, tokens: Tensor) -> Tensor:
        """The image tower's head (final norm and projection) applied to any (..., C) tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its image head")

    def image_tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        """Tokens (B, N, C) entering image block ``block`` (``num_image_blocks``: after the last one),
        without a graph, and the patch grid."""
        raise NotImplementedError(f"{type(self).__name__} does not expose intermediate image tokens")

    def image_embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        """Image embedding (B, D) from tokens entering block ``block``, with a graph to ``tokens``."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume the image tower mid-way")

    def text_tokens_before(self, tokens: Tensor, block: int) -> Tensor:
        """Hidden states (K, L, C) entering text block ``block``, without a graph."""
        raise NotImplementedError(f"{type(self).__name__} does not expose intermediate text tokens")

    def text_embedding_from(self, hidden: Tensor, tokens: Tensor, block: int) -> Tensor:
        """Text embedding (K, D) from hidden states entering block ``block`` of the sequences ``tokens``."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume the text tower mid-way")

    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """MaskCLIP's dense features: (embedding (B, D), patch features (B, P, D)) where the last block's
        attention is replaced by its value path."""
        raise NotImplementedError(f"{type(self).__name__} does not support MaskCLIP")

    def surgery_features(self, pixels: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        """CLIP Surgery's dense features: (embedding (B, D), patch features (B, P, D)) from a parallel
        v-v attention path through the last ``depth`` blocks."""
        raise NotImplementedError(f"{type(self).__name__} does not support CLIP Surgery")

    def image_parameter_groups(self) -> list[tuple[str, list[torch.nn.Parameter]]]:
        """The image tower's parameters in groups from the top (head) down to the input embedding,
        for the cascading randomisation sanity check."""
        raise NotImplementedError(f"{type(self).__name__} does not list its image parameters")
