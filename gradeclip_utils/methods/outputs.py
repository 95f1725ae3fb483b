"""What every method returns, and the score it explains: the image-text cosine."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class MapOutput:
    """What an image method returns: raw maps (B, K, h, w) float32 and scores (B, K)."""

    maps: Tensor
    scores: Tensor


@dataclass
class TokenOutput:
    """What a text method returns: raw relevance per position (B, K, L) float32 and scores (B, K)."""

    relevance: Tensor
    scores: Tensor


def cosine_scores(embedding: Tensor, targets: Tensor) -> Tensor:
    """S[n, m] = cos(embedding[n], targets[m]) in float32; ``targets`` are unit-normalised."""
    return F.normalize(embedding.float(), dim=-1) @ targets.float().T
