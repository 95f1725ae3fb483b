"""Peak memory of the workbench's calls above the loaded model, one fresh process per case.

Each case runs in its own subprocess: load the model, build the inputs, return the C heap's free pages to
the OS (``malloc_trim``), reset the peak (the kernel's resident-set high-water mark through
``/proc/self/clear_refs``; on CUDA ``reset_peak_memory_stats``), run the call once and read the peak
(``VmHWM``; on CUDA ``max_memory_allocated``). "peak MiB" is that peak above the memory in use just
before the call, so it includes what a first call allocates once; "s" are the wall and CPU seconds of
that same call (one run: read them as an order of magnitude; ``benchmarks/speed.py`` times with
repeats). A fresh process per case keeps one case's cached memory out of the next one's peak. The
measuring itself is ``gradeclip_utils.timing``'s (``Meter``), the random-weight models ``benchmarks/speed.py``'s.

Cases (B images x K prompts; prompts are random unit text embeddings, pictures random preprocessed
tensors at the model's resolution):

* ``forward_b1``, ``forward_b8``: the model's own image forward without a graph, for reference;
* ``grad_eclip_k1`` / ``_k100`` / ``_k1000``: ``explain_image`` (Grad-ECLIP, last block), B = 1;
* ``text_16`` / ``_64`` / ``_256``: ``explain_text`` of that many captions filling the context (77
  tokens on CLIP) against one picture, the last 8 text blocks, in chunks from its default memory budget
  (``--memory-budget`` sets one); ``text_64_one_batch`` / ``text_256_one_batch``: the same with every
  caption in one batch (a budget no call reaches), as ``explain_text`` ran before it had chunks;
* ``game_1x1``, ``game_8x8``, ``game_last_8x8``, ``rollout_1x1``, ``rollout_8x8``: ``explain_image``;
* ``m2ib_1x1`` (its defaults) and ``rise_1x1`` (``--rise-masks`` masks, one batch).

The image cases above run in one chunk (a budget no call reaches), as they ran before the budget cut them;
these measure one unit more (the per-unit peaks the estimates of ``gradeclip_utils/budget.py`` bound):
``grad_eclip_b8`` (8 images), ``game_8x1`` (8 images, 1 prompt), ``game_1x8`` (1 image, 8 prompts in one
backward pass), ``m2ib_s1`` / ``m2ib_s8`` (one step of 1 / 8 noise samples in one forward), ``rise_b4``
(4 images x ``--rise-masks`` masks in one forward), ``curves_16`` / ``curves_64`` (deletion and insertion of
6 images, 16 / 64 perturbed pictures per forward). The ``*_budget`` cases run the same calls in the chunks
of the default budget (or ``--memory-budget``): ``game_8x8_budget``, ``m2ib_s8_budget``, ``rise_b4_budget``.
Each case also prints the estimate of its call's peak (``budget.py``: the plan's bytes for the chunks it
ran), to compare with the measured peak.

    python benchmarks/memory.py                                     # the embedded synthetic model
    OMP_NUM_THREADS=1 python benchmarks/memory.py --model ViT-B-16 --pretrained none --threads 1 \\
        --cases 'game*,rollout*,text*' --json memory.json
    python benchmarks/memory.py --model ViT-L-14 --pretrained none --plan     # chunks of the default budget

``--plan`` measures nothing: it prints the chunks each path gets from the budget (the default 1 GiB cap, or
``--memory-budget``), from the estimates alone, with each plan's estimated peak.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the random-weight models and captions)
from gradeclip_utils.timing import Meter, release_free_memory  # noqa: E402

MiB = 2 ** 20
#: a memory budget no call reaches: every caption in one batch (explain_text as it ran before its chunks)
ONE_BATCH = 2 ** 50

#: case name -> (what it runs, B images, K prompts or captions, method options)
CASES: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    "forward_b1": ("forward", 1, 0, {}),
    "forward_b8": ("forward", 8, 0, {}),
    "grad_eclip_k1": ("grad_eclip", 1, 1, {}),
    "grad_eclip_k100": ("grad_eclip", 1, 100, {}),
    "grad_eclip_k1000": ("grad_eclip", 1, 1000, {}),
    "text_16": ("text", 1, 16, {}),
    "text_64": ("text", 1, 64, {}),
    "text_256": ("text", 1, 256, {}),
    "text_64_one_batch": ("text", 1, 64, {"memory_budget": ONE_BATCH}),
    "text_256_one_batch": ("text", 1, 256, {"memory_budget": ONE_BATCH}),
    "grad_eclip_b8": ("grad_eclip", 8, 1, {"memory_budget": ONE_BATCH}),
    "game_1x1": ("game", 1, 1, {"memory_budget": ONE_BATCH}),
    "game_8x8": ("game", 8, 8, {"memory_budget": ONE_BATCH}),
    "game_8x1": ("game", 8, 1, {"memory_budget": ONE_BATCH}),
    "game_1x8": ("game", 1, 8, {"memory_budget": ONE_BATCH}),
    "game_8x8_budget": ("game", 8, 8, {}),
    "game_last_8x8": ("game_last", 8, 8, {"memory_budget": ONE_BATCH}),
    "rollout_1x1": ("rollout", 1, 1, {"memory_budget": ONE_BATCH}),
    "rollout_8x8": ("rollout", 8, 8, {"memory_budget": ONE_BATCH}),
    "m2ib_1x1": ("m2ib", 1, 1, {"memory_budget": ONE_BATCH}),
    "m2ib_s1": ("m2ib", 1, 1, {"memory_budget": ONE_BATCH, "steps": 1, "samples": 1}),
    "m2ib_s8": ("m2ib", 1, 1, {"memory_budget": ONE_BATCH, "steps": 1, "samples": 8}),
    "m2ib_s8_budget": ("m2ib", 1, 1, {"steps": 1, "samples": 8}),
    "rise_1x1": ("rise", 1, 1, {"memory_budget": ONE_BATCH}),
    "rise_b4": ("rise", 4, 1, {"memory_budget": ONE_BATCH}),
    "rise_b4_budget": ("rise", 4, 1, {}),
    "curves_16": ("curves", 6, 16, {}),
    "curves_64": ("curves", 6, 64, {}),
}


def full_captions(model, count: int) -> list[str]:
    """``count`` different captions that each fill the model's context exactly (77 tokens on CLIP: start
    token, 75 words, end token), from the one-token words of ``speed.CAPTION_WORDS`` in rotation."""
    adapter = model.adapter
    length = adapter.context_length

    def used(texts: list[str]) -> torch.Tensor:
        """Tokens up to and including the pooled (end) token, without cutting (a cut warns: an error here)."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return adapter.text_token_index(model.tokenize(texts)) + 1

    words = [word for word in dict.fromkeys(speed.CAPTION_WORDS) if int(used([word])[0]) == 3]
    captions = [" ".join(words[(start + i) % len(words)] for i in range(length - 2))
                for start in range(count)]
    if not bool((used(captions) == length).all()):
        raise RuntimeError(f"the captions do not fill the context of {length} tokens exactly")
    return captions


def load(args: argparse.Namespace):
    from gradeclip_utils import load_model

    device = torch.device(args.device)
    if args.model == "synthetic":
        return load_model(device=device, precision=args.precision)
    if args.pretrained.lower() == "none":
        return speed.random_model(args.model, device, args.precision)
    return load_model(args.model, pretrained=args.pretrained, device=device, precision=args.precision)


def build_case(model, name: str, args: argparse.Namespace) -> tuple[Callable[[], Any], int | None]:
    """The call that case ``name`` measures, its inputs built (before the measurement), and the estimate of
    its peak in bytes (``budget.py``; None where there is none)."""
    from gradeclip_utils import budget, explain_image, explain_text
    from gradeclip_utils.explain import explaining
    from gradeclip_utils.methods import get_spec

    kind, batch, count, options = CASES[name]
    adapter = model.adapter
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, *adapter.image_size, generator=generator).to(device=device)
    grid = budget.grid_of(adapter, adapter.image_size)
    if kind == "forward":
        def forward():
            with explaining(model.model), torch.no_grad():
                return adapter.native_encode_image(pixels)
        return forward, batch * budget.image_forward_bytes(adapter, grid)
    if kind == "text":
        captions = full_captions(model, count)
        if args.memory_budget is not None:
            options = {"memory_budget": args.memory_budget, **options}
        return lambda: explain_text(model, pixels, captions, layers=args.text_layers, **options), None
    if kind == "curves":
        return curves_case(model, pixels, count)
    targets = speed.unit_targets(count, adapter.embed_dim, seed=1, device=device)
    # what the method takes from a run's settings (its spec's run_options: RISE's masks), as the evaluation does
    spec = get_spec(kind)
    options = {**spec.options_from({"rise_masks": args.rise_masks}), **options}
    if args.memory_budget is not None and "memory_budget" not in options:
        options["memory_budget"] = args.memory_budget
    within = budget.resolve_budget(options.get("memory_budget"), device)
    method_options = {k: v for k, v in options.items() if k != "memory_budget"}
    plan = budget.image_plan(adapter, spec, grid, count, method_options, adapter.resolve_layers((-1,), "image"),
                             within, batch)
    return (lambda: explain_image(model, pixels, targets, method=kind, batch_size=batch, progress=False, **options),
            plan.bytes)


def curves_case(model, pixels: torch.Tensor, count: int) -> tuple[Callable[[], Any], int]:
    """Deletion and insertion of the pictures ``pixels`` (random maps, 35 random classes), ``count`` perturbed
    pictures per forward; the estimate of ``budget.curves_cost``."""
    from gradeclip_utils import budget
    from gradeclip_utils.explain import explaining
    from gradeclip_utils.metrics import perturbation_curves

    adapter = model.adapter
    grid = budget.grid_of(adapter, adapter.image_size)
    maps = torch.rand(pixels.shape[0], *grid, generator=torch.Generator().manual_seed(2))
    classes = speed.unit_targets(35, adapter.embed_dim, seed=3, device=pixels.device)
    mean, std = model.normalization

    def curves():
        with explaining(model.model):
            return perturbation_curves(adapter, pixels, maps, classes, [0] * pixels.shape[0], mean=mean, std=std,
                                       batch_size=count)

    cost = budget.curves_cost(adapter, grid, pixels.shape[0], 1, count)
    return curves, cost.total(1, count)


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one case in this process (a fresh one)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args)
    call, estimate = build_case(model, args.child, args)
    meter = Meter(torch.device(args.device))
    release_free_memory()
    before = meter.in_use()
    sample = meter.run(call, memory=True)
    return {"case": args.child, "peak_bytes": sample.peak, "wall_s": sample.wall, "cpu_s": sample.cpu,
            "estimate_bytes": estimate, "before_bytes": before,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_command(args: argparse.Namespace, case: str, out: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--child-out", out,
               "--model", args.model, "--pretrained", args.pretrained, "--device", args.device,
               "--precision", args.precision, "--rise-masks", str(args.rise_masks),
               "--text-layers", str(args.text_layers)]
    if args.memory_budget is not None:
        command += ["--memory-budget", str(args.memory_budget)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def selected(patterns: str) -> list[str]:
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    names = [name for name in CASES if any(fnmatch.fnmatchcase(name, p) for p in wanted)]
    unknown = [p for p in wanted if not any(fnmatch.fnmatchcase(name, p) for name in CASES)]
    if unknown:
        raise SystemExit(f"no case matches {unknown}; cases: {', '.join(CASES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic",
                        help="'synthetic' (the embedded model, the default), or a model name for load_model; with "
                             "--pretrained none also speed.py's random-weight families (hf-random:B-16, ...)")
    parser.add_argument("--pretrained", default="none", help="weights tag for --model; 'none': random weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each case's process")
    parser.add_argument("--cases", default="*", help="comma-separated case names or patterns (default: all): "
                                                     + ", ".join(CASES))
    parser.add_argument("--rise-masks", type=int, default=16, help="RISE masks (one batch)")
    parser.add_argument("--text-layers", type=int, default=8, help="text blocks explained (the authors: last 8)")
    parser.add_argument("--memory-budget", type=int, default=None,
                        help="the memory budget in bytes of the text* and *_budget cases (default: the calls' own "
                             "default; the *_one_batch and other image cases always run in one chunk)")
    parser.add_argument("--plan", action="store_true",
                        help="measure nothing: print the chunks every path gets from the budget, from the estimates")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a case is given up")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


#: (path, method, images at most, targets, options) of ``--plan``: explain_image's default batch of 8, and the
#: evaluation's calls (a batch of 16 against its distinct targets, RISE's 2000 masks, M2IB one target per image)
PLANS = [("explain_image", "grad_eclip", 8, 1, {}), ("explain_image", "grad_eclip", 8, 100, {}),
         ("explain_image", "rollout", 8, 1, {}), ("explain_image", "game", 8, 1, {}),
         ("explain_image", "game", 8, 16, {}), ("explain_image", "game_last", 8, 16, {}),
         ("explain_image", "m2ib", 8, 1, {}), ("explain_image", "rise", 8, 1, {}),
         ("evaluation", "grad_eclip", 16, 16, {}), ("evaluation", "game", 16, 16, {}),
         ("evaluation", "rollout", 16, 16, {}), ("evaluation", "m2ib", 16, 1, {"paired": True}),
         ("evaluation", "rise", 16, 16, {})]


def print_plans(args: argparse.Namespace) -> None:
    """The chunks the budget gives each path, from the estimates (``budget.py``), without running anything."""
    from gradeclip_utils import budget
    from gradeclip_utils.methods import get_spec

    model = load(args)
    adapter = model.adapter
    device = torch.device(args.device)
    within = budget.resolve_budget(args.memory_budget, device) if args.memory_budget is not None \
        else budget.DEFAULT_CAP
    grid = budget.grid_of(adapter, adapter.image_size)
    print(f"{args.model}: image {adapter.image_size[0]} x {adapter.image_size[1]} px ({grid[0]} x {grid[1]} patches), "
          f"budget {within / MiB:,.0f} MiB")
    caption = budget.caption_bytes(adapter)
    print(f"explain_text: {budget.chunk_size(within, caption, 10 ** 6)} captions of {adapter.context_length} tokens "
          f"per chunk ({caption / MiB:.1f} MiB each)")
    layers = adapter.resolve_layers((-1,), "image")
    for path, method, images, count, options in PLANS:
        spec = get_spec(method)
        try:
            plan = budget.image_plan(adapter, spec, grid, count, options, layers, within, images)
        except ValueError as error:
            print(f"{path}: {method}, K = {count}: {error}")
            continue
        inner = ", ".join(f"{k} {v}" for k, v in plan.options.items())
        print(f"{path}: {method}, K = {count}: images per call {plan.images}{', ' + inner if inner else ''} "
              f"(estimated peak {plan.bytes / MiB:,.0f} MiB)")
    cost = budget.curves_cost(adapter, grid, 16, 3, 128)
    plan = budget.plan(cost, within, 1, what="deletion and insertion")
    print(f"evaluation: deletion and insertion of 16 images, 3 tie seeds: {plan.options['batch_size']} perturbed "
          f"pictures per forward (estimated peak {plan.bytes / MiB:,.0f} MiB)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = run_child(args)
        Path(args.child_out).write_text(json.dumps(result))
        return 0
    if args.plan:
        print_plans(args)
        return 0
    names = selected(args.cases)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    weights = "the embedded synthetic model" if args.model == "synthetic" else (
        f"{args.model}, {'random weights' if args.pretrained.lower() == 'none' else args.pretrained}")
    print(f"model {weights}, {args.precision}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, torch {torch.__version__}, "
          f"threads {args.threads or 'default'}, {platform.processor() or platform.machine()}")
    print("peak MiB: " + ("max_memory_allocated" if cuda else "peak resident set (VmHWM)")
          + " above the memory in use before the call, first call of a fresh process per case")
    header = (f"{'case':16s} {'B':>3s} {'K':>5s} {'peak MiB':>10s} {'estimate':>10s} {'wall s':>9s} {'cpu s':>9s}"
              "  note")
    print(header)
    print("-" * len(header))
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            kind, batch, count, _ = CASES[name]
            out = os.path.join(folder, f"{name}.json")
            started = time.perf_counter()
            try:
                done = subprocess.run(child_command(args, name, out), capture_output=True, text=True,
                                      timeout=args.timeout)
                failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
            except subprocess.TimeoutExpired:
                failure = f"gave up after {args.timeout:.0f} s"
            if failure is None:
                record = json.loads(Path(out).read_text())
                peak, estimate = record["peak_bytes"], record["estimate_bytes"]
                print(f"{name:16s} {batch:3d} {count or '':>5} {'' if peak is None else f'{peak / MiB:10.1f}':>10s} "
                      f"{'' if estimate is None else f'{estimate / MiB:10.1f}':>10s} "
                      f"{record['wall_s']:9.2f} {record['cpu_s']:9.2f}", flush=True)
            else:
                record = {"case": name, "error": failure}
                print(f"{name:16s} {batch:3d} {count or '':>5} {'':>10s} {'':>10s} {'':>9s} {'':>9s}  {failure}",
                      flush=True)
            record.update(kind=kind, batch=batch, count=count, process_s=time.perf_counter() - started)
            results.append(record)
    if args.json:
        settings = {key: value for key, value in vars(args).items() if not key.startswith("child")}
        Path(args.json).write_text(json.dumps({"settings": {**settings, "torch": torch.__version__,
                                                            "machine": platform.machine()},
                                               "cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
