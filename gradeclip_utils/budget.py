"""Memory budgets: how many units of work one batch may hold, from the model and the memory free.

Every batched path cuts its work into chunks whose estimated peak fits one budget in bytes
(``memory_budget=``): by default a fraction of the memory free on the model's device (CUDA:
``torch.cuda.mem_get_info``; the CPU: ``psutil.virtual_memory().available``), capped so that a machine with
much free memory does not turn into one huge batch that is no faster per unit (see ``DEFAULT_CAP``). The
paths and their units:

- ``explain_text``: captions per forward and backward pass (``caption_bytes``);
- image methods, wherever they run (``explain_image``, the evaluation, the dataset job: the runner
  ``session.run_image_method``): images per call, and the unit of the method's own inner chunk, which the
  method declares in its file (``MethodSpec.memory``, returning a ``Cost``): GAME's targets per backward
  pass, M2IB's noise samples per forward, RISE's masks per forward; a method that declares nothing is
  charged ``default_cost``;
- deletion and insertion: perturbed pictures per forward (``curves_cost``).

``plan`` turns a ``Cost`` and a budget into chunk sizes, largest inner chunk first (up to the method's own
option, e.g. GAME's ``chunk``), then as many images as fit; a budget below one image with one unit is a
ValueError before any work, naming the unit and the bytes it needs.

The estimates, from the model only (no forward pass). For a tower of width C with H heads, N tokens per
input (a grid of h x w patches and the class token: N = h w + 1), b bytes per value (its dtype):

- one block without a graph (a forward under ``no_grad``, one block's values alive at a time):
  ``(FORWARD_PER_TOKEN C + ATTENTION_MAPS H N) N`` values;
- one block with its graph (what it keeps for a backward pass): ``(ACTIVATIONS_PER_TOKEN C + ATTENTION_MAPS
  H N) N`` values;
- ``block_bytes``: b x one of those + ``ALLOCATOR_SLACK`` (0.5 MiB, the allocator's share per block and
  input, which sets the peak of small models);
- ``image_forward_bytes(adapter, grid, graph_blocks)`` = b x trunk + one block without a graph +
  ``graph_blocks`` blocks with their graph (``block_bytes``); trunk = ``TRUNK_COPIES`` x c x (H/s)(W/s) for a
  convolutional trunk whose largest map has c channels at stride s (a ResNet's first stage), 0 for a ViT;
- ``explicit_bytes``: a block computed explicitly (to capture its attention), beyond the model's own:
  b (4 C + ``ATTENTION_MAPS`` H N) N (q, k, v by heads and their output; the attention maps again);
- ``backward_bytes``: one cotangent pulled back through one block, ``BACKWARD_COPIES`` x ``block_bytes``
  without a graph plus its attention gradient in float32 (4 H N^2 bytes);
- ``tokens_bytes`` = b N C (one input's tokens); ``attention_bytes`` = 4 H N^2 (one block's attention
  probabilities in float32); ``map_bytes`` = 4 K h w (K maps); ``picture_bytes`` = b 3 H W (one picture);
- ``caption_bytes`` = ``ACTIVATIONS_PER_TOKEN`` x text width x context length x text blocks x b.

``ACTIVATIONS_PER_TOKEN`` = 24 counts the values a transformer block keeps per token for its backward pass,
in units of the width C: layer-norm inputs and outputs (4 C), q, k and v (3 C), the attention output and
its projection (2 C), the MLP's hidden layer before and after the GELU (8 C), the head-wise attention
probabilities before and after the softmax (for text, 2 H L values: about 2.4 C for CLIP's 8 heads over 77
tokens at C = 512), the residual stream and what the method captures (about 4 C). For captions it is
charged for every text block (a method may differentiate from the first block on, as GAME does), so it is
an upper bound for Grad-ECLIP on the last 8 blocks. Checked against ``benchmarks/memory.py``
(docs/performance.md, Memory): ViT-B-16's text tower (C = 512, 77 tokens, 12 blocks, fp32) is estimated at
43.3 MiB per caption; ``explain_text`` in one batch measured 22.6-30.3 MiB per caption (Grad-ECLIP, last 8
blocks). ``FORWARD_PER_TOKEN`` = 12: without a graph a block's values are freed as it goes, and at its peak
(the MLP) the input, the residual, the norm's output and the hidden layer before and after the GELU are
alive (11 C); ``ATTENTION_MAPS`` = 3: the attention's logits, scaled logits and probabilities, H N^2 each,
alive together when the attention is computed explicitly. The image estimates are checked against peaks
measured on the embedded model and ViT-B-16 (docs/performance.md, Memory: each an upper bound of the
measured per-unit peak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

#: values kept per token and block for the backward pass, in units of the width (see above)
ACTIVATIONS_PER_TOKEN = 24
#: values alive per token at the peak of a block run without a graph, in units of the width
FORWARD_PER_TOKEN = 12
#: the attention's (H, N, N) maps alive together when it is computed explicitly
ATTENTION_MAPS = 3
#: a block's forward values that one cotangent's backward pass through it holds: its gradients and their
#: temporaries
BACKWARD_COPIES = 2
#: bytes charged per block and input beyond its values: the allocator's share (its small tensors, each
#: allocation rounded to pages), which sets the peak of small models
ALLOCATOR_SLACK = 2 ** 19
#: copies of a convolutional trunk's largest feature map alive at once (a residual block's input, its branch
#: and the sum, with the allocator's slack)
TRUNK_COPIES = 4
#: share of the free memory a call may take by default (the rest: the model's own buffers, the
#: allocator's slack, other work on the machine)
SAFETY_FRACTION = 0.5
#: the default budget's ceiling in bytes (1 GiB): beyond about 20 captions of 77 tokens per batch a larger
#: batch is no faster per caption (docs/performance.md, Memory), only larger
DEFAULT_CAP = 2 ** 30
MiB = 2 ** 20
#: the byte suffixes ``parse_bytes`` reads (powers of 1024)
SUFFIXES = {"": 1, "B": 1, "K": 2 ** 10, "KB": 2 ** 10, "KIB": 2 ** 10, "M": 2 ** 20, "MB": 2 ** 20, "MIB": 2 ** 20,
            "G": 2 ** 30, "GB": 2 ** 30, "GIB": 2 ** 30, "T": 2 ** 40, "TB": 2 ** 40, "TIB": 2 ** 40}


# -------------------------------------------------------------------------------------- the budget
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


def check_budget(budget: Any) -> int:
    """``budget`` if it is a number of bytes (an int >= 0), else a ValueError naming it."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"memory_budget must be a number of bytes (an int >= 0), got {budget!r}")
    return budget


def resolve_budget(budget: int | None, device: torch.device | str) -> int:
    """``budget`` checked, or the device's ``default_budget`` when it is None."""
    return default_budget(device) if budget is None else check_budget(budget)


def parse_bytes(text: str) -> int:
    """A size such as ``2G``, ``512M``, ``1.5GiB`` or ``1000000`` in bytes (suffixes are powers of 1024)."""
    number = text.strip().upper()
    unit = number.lstrip("0123456789._")
    try:
        value = float(number[:len(number) - len(unit)].replace("_", "")) * SUFFIXES[unit.strip()]
    except (ValueError, KeyError):
        raise ValueError(f"expected a size in bytes such as 2G, 512M or 1000000, got {text!r}") from None
    return int(value)


def chunk_size(budget: int, unit_bytes: int, count: int, unit: str = "caption") -> int:
    """How many units of ``unit_bytes`` each fit ``budget`` bytes, at most ``count`` (at least 1 when
    ``count`` is 0). A budget below one unit is a ValueError naming the bytes one unit needs."""
    check_budget(budget)
    if budget < unit_bytes:
        raise ValueError(f"a memory budget of {budget:,} bytes cannot hold one {unit}: one {unit} needs about "
                         f"{unit_bytes:,} bytes ({unit_bytes / MiB:.1f} MiB); raise memory_budget")
    return max(1, min(count, budget // unit_bytes))


# ------------------------------------------------------------------------------------- estimators
def _itemsize(tower: Any) -> int:
    return torch.empty((), dtype=tower.dtype).element_size()


def tokens(grid: Sequence[int]) -> int:
    """Tokens per input at a patch grid: its patches and the class (or pooled) token."""
    return int(grid[0]) * int(grid[1]) + 1


def block_values(width: int, heads: int, count: int, *, graph: bool) -> int:
    """Values one block holds for one input of ``count`` tokens: with its graph (kept for a backward pass)
    or without (a forward's peak)."""
    per_token = ACTIVATIONS_PER_TOKEN if graph else FORWARD_PER_TOKEN
    return (per_token * width + ATTENTION_MAPS * heads * count) * count


def block_bytes(adapter: Any, grid: Sequence[int], *, graph: bool) -> int:
    """Bytes of one image block for one image: ``block_values`` of the image tower's shape, and
    ``ALLOCATOR_SLACK``."""
    tower = adapter.image
    width, heads = tower.block_shape()
    return block_values(width, heads, tokens(grid), graph=graph) * _itemsize(tower) + ALLOCATOR_SLACK


def image_forward_bytes(adapter: Any, grid: Sequence[int], graph_blocks: int = 0) -> int:
    """Bytes one image's forward holds at its peak: a convolutional trunk's largest maps (a ResNet), one
    block without a graph, and ``graph_blocks`` blocks with their graph (0: a forward without one)."""
    tower = adapter.image
    total = block_bytes(adapter, grid, graph=False) + graph_blocks * block_bytes(adapter, grid, graph=True)
    trunk = tower.trunk_map()
    if trunk is not None:
        (channels, stride), (ph, pw) = trunk, tower.patch_size
        values = TRUNK_COPIES * channels * (grid[0] * ph // stride) * (grid[1] * pw // stride)
        total += values * _itemsize(tower)
    return total


def explicit_bytes(adapter: Any, grid: Sequence[int]) -> int:
    """Bytes an image block computed explicitly (to capture its attention) holds beyond the model's own
    block, for one image: q, k and v split into heads and the heads' output (4 N x C values), and the
    logits, scaled logits and probabilities (``ATTENTION_MAPS`` H N^2) alive beside the block's own."""
    tower = adapter.image
    width, heads = tower.block_shape()
    count = tokens(grid)
    return (4 * width + ATTENTION_MAPS * heads * count) * count * _itemsize(tower)


def backward_bytes(adapter: Any, grid: Sequence[int]) -> int:
    """Bytes of one cotangent pulled back through one image block: ``BACKWARD_COPIES`` times the values of
    the block's forward without a graph (the gradients and the temporaries they are made from), and its
    attention gradient in float32."""
    return BACKWARD_COPIES * block_bytes(adapter, grid, graph=False) + attention_bytes(adapter, grid)


def tokens_bytes(adapter: Any, grid: Sequence[int]) -> int:
    """Bytes of one image's tokens entering a block (N x C values)."""
    tower = adapter.image
    return tokens(grid) * tower.block_shape()[0] * _itemsize(tower)


def attention_bytes(adapter: Any, grid: Sequence[int]) -> int:
    """Bytes of one image block's attention probabilities (H x N x N) in float32."""
    return 4 * adapter.image.block_shape()[1] * tokens(grid) ** 2


def map_bytes(grid: Sequence[int], count: int) -> int:
    """Bytes of ``count`` float32 maps on the patch grid."""
    return 4 * count * int(grid[0]) * int(grid[1])


def picture_bytes(adapter: Any, grid: Sequence[int]) -> int:
    """Bytes of one picture (3 x H x W values) at the pixels of a patch grid."""
    tower = adapter.image
    (ph, pw) = tower.patch_size
    return 3 * grid[0] * ph * grid[1] * pw * _itemsize(tower)


def caption_bytes(adapter: Any) -> int:
    """Estimated bytes the graph of one caption (a full context of tokens) takes in a text method."""
    text = adapter.text
    width = int(text.weight().shape[-1])  # the token embedding matrix (vocabulary, width)
    return ACTIVATIONS_PER_TOKEN * width * text.context_length * text.num_blocks * _itemsize(text)


# ------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class Cost:
    """What one call holds, in bytes, as a method declares it (``MethodSpec.memory``).

    ``image``: for each image of the call; ``unit``: for each unit of the method's own inner chunk, per
    image (``unit_name`` names it: GAME's "target" of a backward pass, M2IB's "noise sample", RISE's
    "mask"), whose size the option ``option`` sets, at most ``limit`` (the option's own value); ``fixed``:
    whatever the chunks (``fixed_what`` says what, e.g. RISE's masks). ``pass_units``: the units a pass of
    the method holds for all the call's images together (RISE's ``mask_batch``: its passes take
    ``mask_batch // B`` masks of each of B images), so that the inner chunk is at most ``pass_units`` over
    the images."""

    image: int
    unit: int = 0
    option: str | None = None
    limit: int = 1
    unit_name: str = ""
    fixed: int = 0
    fixed_what: str = ""
    pass_units: int = 0

    def total(self, images: int, inner: int) -> int:
        """Bytes of ``images`` images with ``inner`` units each."""
        return self.fixed + images * (self.image + inner * self.unit)


@dataclass(frozen=True)
class Plan:
    """Chunk sizes from a budget: ``images`` per call, ``options`` the method's inner chunk ({option: size},
    empty without one), and the estimated peak ``bytes``."""

    images: int
    options: dict[str, int]
    bytes: int


def plan(cost: Cost, budget: int, images: int, what: str = "call") -> Plan:
    """The chunks of ``cost`` within ``budget`` bytes: the inner chunk as large as fits one image (at most
    ``cost.limit``), then as many images as fit with it (at most ``images``, at least 1); where the method's
    passes hold ``cost.pass_units`` units over the call's images (RISE), the images first (as many as fit
    with one unit each), then the inner chunk, so that the passes stay those of a call of that many images.
    A budget below one image with one unit is a ValueError naming ``what``, the unit and the bytes it needs."""
    check_budget(budget)
    inner = max(1, int(cost.limit)) if cost.option is not None else 0
    least = cost.total(1, min(inner, 1))
    if budget < least:
        unit = f"one {cost.unit_name}" if cost.option is not None else "one image"
        unit = f"one image with {unit}" if cost.option is not None and cost.image else unit
        fixed = f"; {cost.fixed:,} bytes of it for {cost.fixed_what}" if cost.fixed else ""
        raise ValueError(f"{what}: a memory budget of {budget:,} bytes cannot hold {unit}, which needs about "
                         f"{least:,} bytes ({least / MiB:.1f} MiB{fixed}); raise memory_budget")
    if cost.option is not None and cost.unit > 0 and cost.pass_units:
        for count in range(max(1, images), 0, -1):  # one image always fits (checked above)
            fit = (budget - cost.fixed - count * cost.image) // (count * cost.unit)
            if fit >= 1:
                inner = min(inner, max(1, cost.pass_units // count), fit)
                return Plan(count, {cost.option: inner}, cost.total(count, inner))
    if cost.option is not None and cost.unit > 0:
        inner = min(inner, (budget - cost.fixed - cost.image) // cost.unit)
    each = cost.image + inner * cost.unit
    count = max(1, min(images, (budget - cost.fixed) // each)) if each > 0 else max(1, images)
    return Plan(count, {cost.option: inner} if cost.option is not None else {}, cost.total(count, inner))


def default_cost(adapter: Any, grid: Sequence[int], count: int) -> Cost:
    """A method that declares no cost: an image's forward with the graph of one block, and its ``count`` maps."""
    return Cost(image=image_forward_bytes(adapter, grid, graph_blocks=1) + map_bytes(grid, count))


def method_cost(adapter: Any, spec: Any, grid: Sequence[int], count: int, options: Mapping[str, Any],
                layers: Sequence[int]) -> Cost:
    """The cost ``spec``'s method declares (``MethodSpec.memory``: a function of the adapter, the grid, the
    number of targets per image and the options, the spec's defaults under the call's, with ``layers``), or
    ``default_cost``."""
    declared = getattr(spec, "memory", None)
    if declared is None:
        return default_cost(adapter, grid, count)
    return declared(adapter, tuple(grid), count, {**getattr(spec, "options", {}), **options, "layers": list(layers)})


def image_plan(adapter: Any, spec: Any, grid: Sequence[int], count: int, options: Mapping[str, Any],
               layers: Sequence[int], budget: int, images: int) -> Plan:
    """The chunks of an image method's call on ``images`` images (at most) of one ``grid`` against ``count``
    targets each, within ``budget`` bytes (``method_cost``, ``plan``)."""
    cost = method_cost(adapter, spec, grid, count, options, layers)
    return plan(cost, budget, images, what=getattr(spec, "name", "the method"))


def curves_cost(adapter: Any, grid: Sequence[int], images: int, tie_seeds: int, limit: int) -> Cost:
    """Deletion and insertion on ``images`` images: each perturbed picture's forward without a graph, the
    picture and which pixels it changes; fixed, the images' pixels, random pictures and pixel ranks (one
    per tie seed, int64)."""
    pixels = picture_bytes(adapter, grid) // 3 // _itemsize(adapter.image)
    per_image = 2 * picture_bytes(adapter, grid) + 8 * tie_seeds * pixels
    unit = image_forward_bytes(adapter, grid) + 2 * picture_bytes(adapter, grid) + pixels
    return Cost(image=0, unit=unit, option="batch_size", limit=limit, unit_name="perturbed picture",
                fixed=images * per_image, fixed_what=f"the pixels and pixel ranks of {images} images")


def grid_of(adapter: Any, size: Sequence[int]) -> tuple[int, int]:
    """The patch grid of pixels of ``size`` (H, W)."""
    ph, pw = adapter.image.patch_size
    return int(size[-2]) // ph, int(size[-1]) // pw


__all__ = ["ACTIVATIONS_PER_TOKEN", "ATTENTION_MAPS", "BACKWARD_COPIES", "Cost", "DEFAULT_CAP", "FORWARD_PER_TOKEN",
           "Plan", "SAFETY_FRACTION", "TRUNK_COPIES", "attention_bytes", "backward_bytes", "block_bytes",
           "block_values", "caption_bytes", "check_budget", "chunk_size", "curves_cost", "default_budget",
           "default_cost", "explicit_bytes", "free_memory", "grid_of", "image_forward_bytes", "image_plan",
           "map_bytes", "method_cost", "parse_bytes", "picture_bytes", "plan", "resolve_budget", "tokens",
           "tokens_bytes"]
