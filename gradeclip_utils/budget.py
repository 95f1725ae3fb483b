"""Memory budgets: how many units of work (captions) one batch may hold, from the model and the memory free.

A batched call cuts its work into chunks so that the graph it keeps for one chunk fits a budget in bytes:
by default a fraction of the memory free on the model's device (CUDA: ``torch.cuda.mem_get_info``; the
CPU: ``psutil.virtual_memory().available``), capped so that a machine with much free memory does not
turn into one huge batch that is no faster per unit (see ``DEFAULT_CAP``).

The cost of one caption in ``explain_text`` is estimated from the model, not measured:

    bytes per caption = ACTIVATIONS_PER_TOKEN x text width x context length x text blocks x bytes per value

``ACTIVATIONS_PER_TOKEN`` = 24 counts the values a transformer block keeps per token for its backward pass,
in units of the width C: layer-norm inputs and outputs (4 C), q, k and v (3 C), the attention output and
its projection (2 C), the MLP's hidden layer before and after the GELU (8 C), the head-wise attention
probabilities before and after the softmax (2 H L values: about 2.4 C for CLIP's 8 heads over 77
tokens at C = 512), the residual stream and what the method captures (about 4 C). It is charged for
every text block (a method may differentiate from the first block on, as GAME does), so it is an upper
bound for Grad-ECLIP on the last 8 blocks. Checked against ``benchmarks/memory.py`` (docs/performance.md,
Memory): ViT-B-16's text tower (C = 512, 77 tokens, 12 blocks, fp32) is estimated at 43.3 MiB per
caption; ``explain_text`` in one batch measured 22.6-30.3 MiB per caption (Grad-ECLIP, last 8 blocks).
"""

from __future__ import annotations

from typing import Any

import torch

#: values kept per token and text block for the backward pass, in units of the text width (see above)
ACTIVATIONS_PER_TOKEN = 24
#: share of the free memory a call may take by default (the rest: the model's own buffers, the
#: allocator's slack, other work on the machine)
SAFETY_FRACTION = 0.5
#: the default budget's ceiling in bytes (1 GiB): beyond about 20 captions of 77 tokens per batch a larger
#: batch is no faster per caption (docs/performance.md, Memory), only larger
DEFAULT_CAP = 2 ** 30


def free_memory(device: torch.device | str) -> int:
    """Bytes free on ``device``: CUDA's free device memory, else the memory the OS can give (psutil)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def default_budget(device: torch.device | str) -> int:
    """``SAFETY_FRACTION`` of ``free_memory(device)``, at most ``DEFAULT_CAP`` bytes."""
    return min(int(SAFETY_FRACTION * free_memory(device)), DEFAULT_CAP)


def caption_bytes(adapter: Any) -> int:
    """Estimated bytes the graph of one caption (a full context of tokens) takes in a text method."""
    text = adapter.text
    width = int(text.weight().shape[-1])  # the token embedding matrix (vocabulary, width)
    itemsize = torch.empty((), dtype=text.dtype).element_size()
    return ACTIVATIONS_PER_TOKEN * width * text.context_length * text.num_blocks * itemsize


def chunk_size(budget: int, unit_bytes: int, count: int, unit: str = "caption") -> int:
    """How many units of ``unit_bytes`` each fit ``budget`` bytes, at most ``count`` (at least 1 when
    ``count`` is 0). A budget below one unit is a ValueError naming the bytes one unit needs."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"memory_budget must be a number of bytes (an int >= 0), got {budget!r}")
    if budget < unit_bytes:
        raise ValueError(f"a memory budget of {budget:,} bytes cannot hold one {unit}: one {unit} needs about "
                         f"{unit_bytes:,} bytes ({unit_bytes / 2 ** 20:.1f} MiB); raise memory_budget")
    return max(1, min(count, budget // unit_bytes))


__all__ = ["ACTIVATIONS_PER_TOKEN", "DEFAULT_CAP", "SAFETY_FRACTION", "caption_bytes", "chunk_size",
           "default_budget", "free_memory"]
