"""What the method evaluation costs per image and per method: peak memory above the model and seconds, each
case in a fresh process, and a small evaluation run under a memory budget.

Every case runs in its own subprocess (as ``benchmarks/memory.py``'s, whose model loading it shares): load
the model, build the inputs, return the C heap's free pages to the OS, reset the peak and run the call once
(``gradeclip_utils.timing.Meter``). "peak MiB" is the peak resident set (CUDA: ``max_memory_allocated``)
above the memory in use just before the call, with the model and the inputs loaded; "CPU s" the process
CPU time of the call (``time.process_time``: on a shared machine the steadier number), "wall s" its wall
time. One run per case: on a shared machine even the CPU seconds move by up to 20% from run to run.

The calls are the evaluation's own (``gradeclip_utils.evaluation``), with its default settings
(``EvalConfig``) and the chunks it plans from the memory budget (``evaluation/chunks.py``; the budget's
default, or ``--memory-budget``), on ``--batch`` random preprocessed pictures at the model's input size
against a zero-shot classifier of ``--classes`` random unit rows (ImageNet's 1,000), each picture explained
for its own class (one class per picture at ``--batch 1``; at a larger batch two classes, as a batch of
ImageNet sorted by class has one or two):

* ``forward``: the model's own image forward of the batch without a graph (the unit the others are read in);
* one case per method the evaluation runs by default (``default_methods()``, the random reference included),
  its maps as the evaluation computes them (``evaluation.methods.batch_maps``); RISE once per mask count
  of ``--rise-masks`` (``rise@16``, ...: the evaluation's call of 2,000 masks, with its chunks, on that many
  masks) and M2IB once per step count of ``--m2ib-steps`` (``m2ib@10``, ...); where the evaluation's
  default (2,000 masks, 10 steps) is not among them, it is extrapolated from the two largest counts measured
  (marked "estimate"; ``extrapolate``: seconds linear in the count, the peak that of the largest count
  and, for RISE, the masks it did not hold);
* ``curves``: deletion and insertion of the batch as the evaluation runs them
  (``evaluation.protocols.project_faithfulness``: 11 points per curve, 3 tie seeds, pictures that two tie
  orders make alike encoded once), for the random reference's maps; "pictures" counts the perturbed
  pictures encoded (their share of 3 x 22 per image depends on the method's ties:
  ``benchmarks/tie_seeds.py``).

``--evaluate N`` instead runs the evaluation itself (``gradeclip_utils.evaluation.evaluate``: N random
pictures of N classes, the methods of ``--eval-methods``, deletion and insertion on, no sanity check and no
timing) in a fresh process and reports its peak resident set, with and above the model, the chunks it planned
(``config.json``) and its CPU seconds.

    python benchmarks/evaluation_cost.py --in-process        # the embedded model in one process: seconds
    python benchmarks/evaluation_cost.py                     # the same, a fresh process per case
    OMP_NUM_THREADS=1 python benchmarks/evaluation_cost.py --model ViT-B-16 --threads 1 --rise-masks 32,64 \\
        --json vit_b_16.json
    OMP_NUM_THREADS=1 python benchmarks/evaluation_cost.py --model ViT-L-14 --threads 1 --rise-masks 12,24 \\
        --m2ib-steps 1,2 --json vit_l_14.json
    OMP_NUM_THREADS=1 python benchmarks/evaluation_cost.py --model ViT-L-14 --threads 1 --evaluate 2 \\
        --eval-methods grad_eclip,m2ib --m2ib-steps 1 --memory-budget 8G --json run.json
    python benchmarks/evaluation_cost.py --model ViT-L-14 --plan --batch 16     # the evaluation's chunks

RISE's largest mask count should be at least its chunk (``mask_chunk``, printed) for its peak to be
extrapolated. The measured results and every command: docs/results/evaluation_cost.json and
docs/performance.md (The evaluation at ViT-B-16 and ViT-L-14 on the CPU).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory  # noqa: E402  (the models of a case's process)
import speed  # noqa: E402  (random unit embeddings)
from gradeclip_utils.timing import Meter, release_free_memory  # noqa: E402

MiB = 2 ** 20
#: the budgets ``--plan`` shows besides ``--memory-budget``: the default's ceiling, 8 GiB, none
PLAN_BUDGETS = (("default (1 GiB at most)", None), ("8 GiB", 8 * 2 ** 30), ("none", 2 ** 62))


# ------------------------------------------------------------------------------------------ the cases
def case_names(args: argparse.Namespace) -> list[str]:
    """The cases of a run: the plain forward, each method (RISE and M2IB once per count), the curves."""
    from gradeclip_utils.evaluation import default_methods

    methods = args.methods.split(",") if args.methods else default_methods()
    names = ["forward"]
    for method in methods:
        if method == "rise":
            names += [f"rise@{n}" for n in args.rise_masks]
        elif method == "m2ib":
            names += [f"m2ib@{n}" for n in args.m2ib_steps]
        else:
            names.append(method)
    names.append("curves")
    wanted = [p.strip() for p in args.cases.split(",") if p.strip()]
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in wanted)]


def eval_config(args: argparse.Namespace, name: str = "", **settings: Any):
    """The evaluation's default settings at ``--batch``, with the case's RISE masks or M2IB steps."""
    from gradeclip_utils.evaluation import EvalConfig

    method, _, count = name.partition("@")
    if method == "rise":
        settings["rise_masks"] = int(count)
    elif method == "m2ib":
        settings["m2ib_steps"] = int(count)
    return EvalConfig(batch_size=args.batch, progress=False, **settings)


def inputs(model, args: argparse.Namespace) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Random preprocessed pictures, their classes (one, or two halves of the batch) and the classifier."""
    adapter = model.adapter
    device = torch.device(args.device)
    pixels = torch.randn(args.batch, 3, *adapter.image_size, generator=torch.Generator().manual_seed(0)).to(device)
    labels = [0] if args.batch == 1 else [2 * b // args.batch for b in range(args.batch)]
    classifier = speed.unit_targets(args.classes, adapter.embed_dim, seed=1, device=device)
    return pixels, labels, classifier


def planned(model, config, name: str, classifier: torch.Tensor, budget: int) -> tuple[dict[str, Any], dict]:
    """(the options of ``name``'s call as the evaluation makes them, the run's chunks for it)."""
    from gradeclip_utils.evaluation import chunks as planner
    from gradeclip_utils.evaluation.methods import method_options

    options = method_options(name, config.settings(), classifier) if name else {}
    every = {name: options} if name else {}
    chunks = planner.plan_chunks(model, config, every, list(every), classes=classifier.shape[0], budget=budget,
                                 bounds={}, required=list(every))
    return (planner.call_options(options, chunks, name, budget) if name else {}), chunks


def build_case(model, name: str, args: argparse.Namespace) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The call case ``name`` measures, its inputs built, and what to record beside its measurement."""
    from gradeclip_utils.budget import resolve_budget
    from gradeclip_utils.evaluation import methods as method_calls
    from gradeclip_utils.evaluation.methods import method_spec
    from gradeclip_utils.explain import explaining

    pixels, labels, classifier = inputs(model, args)
    budget = resolve_budget(args.memory_budget, model.device)
    if name == "forward":
        def forward():
            with explaining(model.model), torch.no_grad():
                return model.adapter.native_encode_image(pixels)
        return forward, {"budget": budget}
    if name == "curves":
        return curves_case(model, args, pixels, labels, classifier, budget)
    method, _, count = name.partition("@")
    # RISE: the call of the evaluation's mask count, with its chunks, on fewer masks (see ``extrapolate``)
    config = eval_config(args, "" if method == "rise" else name)
    options, chunks = planned(model, config, method, classifier, budget)
    if method == "rise":
        options["masks"] = int(count)
    keys = [f"{b}" for b in range(args.batch)]
    extra = {"keys": keys} if method_spec(method).keyed else {}
    recorded = {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool)) or v is None}

    def call():
        return method_calls.batch_maps(model, method, pixels, labels, classifier, {**options, **extra})
    mask_bytes = 4 * pixels.shape[-2] * pixels.shape[-1]  # one RISE mask, float32 at the picture's size
    return call, {"budget": budget, "chunks": chunks.get(method), "options": recorded, "mask_bytes": mask_bytes}


def curves_case(model, args, pixels, labels, classifier, budget) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Deletion and insertion as the evaluation runs them (its tie seeds, its chunk of pictures per forward),
    for the random reference's maps, counting the pictures encoded."""
    import tie_seeds  # the counting adapter of benchmarks/tie_seeds.py

    from gradeclip_utils.evaluation import EvalItem, protocols
    from gradeclip_utils.evaluation.methods import random_maps
    from gradeclip_utils.evaluation.chunks import CURVES
    from gradeclip_utils.explain import explaining

    config = eval_config(args)
    _, chunks = planned(model, config, "", classifier, budget)
    items = [EvalItem(key=f"{b}", label=label, load=lambda: None) for b, label in enumerate(labels)]
    maps = random_maps(model.adapter, pixels, classifier[:1], keys=[item.key for item in items]).maps[:, 0]
    counter = {"pictures": 0}
    real = protocols.perturbation_curves_over_ties
    rows: list[dict[str, Any]] = [{} for _ in items]

    def curves():
        protocols.perturbation_curves_over_ties = lambda adapter, *a, **k: real(
            tie_seeds.Counting(adapter, counter), *a, **k)
        try:
            with explaining(model.model):
                protocols.project_faithfulness(model, pixels, maps, items, classifier, rows, seed=config.seed,
                                               tie_seeds=config.tie_seeds, logit_scale=model.adapter.logit_scale,
                                               steps=protocols.STEPS, batch_size=chunks[CURVES])
        finally:
            protocols.perturbation_curves_over_ties = real
    return curves, {"budget": budget, "chunks": chunks[CURVES], "counter": counter}


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one case in this process (a fresh one)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = memory.load(args)
    if args.child == "evaluation":
        return run_evaluation(model, args)
    call, record = build_case(model, args.child, args)
    counter = record.pop("counter", None)
    meter = Meter(torch.device(args.device))
    release_free_memory()
    before = meter.in_use()
    sample = meter.run(call, memory=True)
    if counter is not None:
        record["pictures"] = counter["pictures"]
    return {"case": args.child, "peak_bytes": sample.peak, "wall_s": sample.wall, "cpu_s": sample.cpu,
            "before_bytes": before, **record}


def run_evaluation(model, args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation of ``--evaluate`` random pictures (one class each) in this process, in batches of
    ``--batch``: its peak above the model and in all, the chunks it planned, its seconds."""
    from gradeclip_utils.evaluation import EvalItem, EvalSet, evaluate

    count = args.evaluate
    classifier = speed.unit_targets(args.classes, model.adapter.embed_dim, seed=1, device=torch.device(args.device))
    generator = torch.Generator().manual_seed(0)
    pictures = [torch.randn(3, *model.adapter.image_size, generator=generator) for _ in range(count)]
    items = [EvalItem(key=f"{b}", label=b, load=lambda b=b: (pictures[b], None)) for b in range(count)]
    data = EvalSet("random", items, [f"class {c}" for c in range(args.classes)], classifier, False)
    meter = Meter(torch.device(args.device))
    release_free_memory()
    before = meter.in_use()
    methods = args.eval_methods.split(",")
    # the RISE masks and M2IB steps asked for where those methods run, else the evaluation's defaults
    counts = {**({"rise_masks": args.rise_masks[-1]} if "rise" in methods else {}),
              **({"m2ib_steps": args.m2ib_steps[-1]} if "m2ib" in methods else {})}
    with tempfile.TemporaryDirectory() as out:
        sample = meter.run(lambda: evaluate(model, data, out, eval_config(
            args, methods=methods, sanity_images=0, timing_images=0, memory_budget=args.memory_budget, **counts)),
            memory=True)
        config = json.loads((Path(out) / "config.json").read_text())
    return {"case": "evaluation", "images": count, "methods": methods, "peak_bytes": sample.peak,
            "before_bytes": before, "peak_rss_bytes": None if sample.peak is None else before + sample.peak,
            "wall_s": sample.wall, "cpu_s": sample.cpu, "chunks": config.get("chunks"),
            "batch_size": args.batch, "memory_budget": args.memory_budget, **counts}


# ------------------------------------------------------------------------------------------ the parent
def child_command(args: argparse.Namespace, case: str, out: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--child-out", out,
               "--model", args.model, "--pretrained", args.pretrained, "--device", args.device,
               "--precision", args.precision, "--batch", str(args.batch), "--classes", str(args.classes),
               "--rise-masks", ",".join(map(str, args.rise_masks)),
               "--m2ib-steps", ",".join(map(str, args.m2ib_steps)), "--eval-methods", args.eval_methods,
               "--evaluate", str(args.evaluate)]
    if args.memory_budget is not None:
        command += ["--memory-budget", str(args.memory_budget)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def measure(args: argparse.Namespace, case: str, folder: str) -> dict[str, Any]:
    """One case in a fresh process (``--in-process``: in this one, to check the script quickly)."""
    out = os.path.join(folder, f"{case}.json")
    started = time.perf_counter()
    if args.in_process:
        record = run_child(argparse.Namespace(**{**vars(args), "child": case}))
        return {**record, "process_s": time.perf_counter() - started, "in_process": True}
    try:
        done = subprocess.run(child_command(args, case, out), capture_output=True, text=True, timeout=args.timeout)
        failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
    except subprocess.TimeoutExpired:
        failure = f"gave up after {args.timeout:.0f} s"
    record = json.loads(Path(out).read_text()) if failure is None else {"case": case, "error": failure}
    record["process_s"] = time.perf_counter() - started
    return record


def extrapolate(records: list[dict[str, Any]], method: str, target: int) -> dict[str, Any] | None:
    """``method`` (RISE or M2IB) at ``target`` masks or steps from its two largest measured counts (None when
    ``target`` was measured or fewer than two counts were). CPU seconds: the line through them (each mask a
    forward of the same chunk, each step the same work); no wall seconds. Peak: M2IB's steps run one after another, so its
    peak is the largest measured; RISE's cases ran the chunks of ``target`` masks, so its peak is the
    largest measured and the masks it did not hold (``mask_bytes`` each: all masks are drawn at once), when it
    forwarded a whole chunk of masks (else no peak: measure more masks than ``mask_chunk``)."""
    measured = sorted((int(r["case"].partition("@")[2]), r) for r in records
                      if r["case"].startswith(method + "@") and "error" not in r)
    if any(n == target for n, _ in measured) or len(measured) < 2:
        return None
    (n0, r0), (n1, r1) = measured[-2:]

    def line(key: str) -> float:
        return r0[key] + (r1[key] - r0[key]) * (target - n0) / (n1 - n0)

    peak = r1.get("peak_bytes")
    if peak is not None and method == "rise":
        # a forward of fewer masks than the chunk would not show the chunk's peak: none then
        chunk = (r1.get("chunks") or {}).get("mask_chunk", 0)
        peak = None if n1 < min(chunk, target) else peak + (target - n1) * r1["mask_bytes"]
    # no wall time: on a shared machine it follows the other work, and a line through two runs does not hold
    return {"case": f"{method}@{target}", "estimate": True, "from": [f"{method}@{n0}", f"{method}@{n1}"],
            "peak_bytes": peak, "cpu_s": line("cpu_s"), "wall_s": None, "chunks": r1.get("chunks")}


def print_row(record: dict[str, Any], batch: int, forward_cpu: float | None) -> None:
    if "error" in record:
        print(f"{record['case']:24s} {record['error']}", flush=True)
        return
    peak = record.get("peak_bytes")
    cpu = record["cpu_s"] / batch
    ratio = f"{cpu / forward_cpu:9.1f}x" if forward_cpu else f"{'':>10s}"
    notes = []
    if "pictures" in record:
        notes.append(f"{record['pictures']} pictures, {record['chunks']} per forward")
    elif record.get("chunks"):
        notes.append(", ".join(f"{k} {v}" for k, v in record["chunks"].items()))
    if record.get("estimate"):
        notes.append("estimate (from " + " and ".join(record["from"]) + ")")
    note = "; ".join(notes)
    wall = record["wall_s"]
    print(f"{record['case']:24s} {'' if peak is None else f'{peak / MiB:10,.0f}':>10s} {cpu:11.2f} "
          f"{'' if wall is None else f'{wall / batch:11.2f}':>11s} {ratio}  {note}", flush=True)


def print_plans(args: argparse.Namespace) -> None:
    """The evaluation's chunks at a batch of ``--batch`` for each budget of ``PLAN_BUDGETS`` (and
    ``--memory-budget``), from the estimates alone, with each method's estimated peak."""
    from gradeclip_utils import budget as memory_budget
    from gradeclip_utils.evaluation import chunks as planner
    from gradeclip_utils.evaluation import default_methods
    from gradeclip_utils.evaluation.methods import method_options, method_spec
    from gradeclip_utils.methods import refusal

    model = memory.load(args)
    adapter = model.adapter
    config = eval_config(args)
    classifier = speed.unit_targets(args.classes, adapter.embed_dim, seed=1, device=torch.device(args.device))
    every = {name: method_options(name, config.settings(), classifier) for name in default_methods()}
    runnable = [m for m in every if refusal(method_spec(m), adapter) is None]
    grid = memory_budget.grid_of(adapter, adapter.image_size)
    layers = adapter.resolve_layers((-1,), "image")
    count = min(max(config.batch_size, config.sanity_images), args.classes)
    budgets = list(PLAN_BUDGETS) + ([("--memory-budget", args.memory_budget)] if args.memory_budget else [])
    for label, value in budgets:
        within = memory_budget.resolve_budget(value, model.device)
        chunks = planner.plan_chunks(model, config, every, runnable, classes=args.classes, budget=within, bounds={})
        size = "" if value == PLAN_BUDGETS[-1][1] else f": {within / MiB:,.0f} MiB"
        print(f"budget {label}{size}; batch {config.batch_size}, {count} targets per call")
        cost = memory_budget.curves_cost(adapter, grid, config.batch_size, config.tie_seeds, chunks[planner.CURVES])
        print(f"  curves: {chunks[planner.CURVES]} pictures per forward "
              f"(estimated peak {cost.total(1, chunks[planner.CURVES]) / MiB:,.0f} MiB)")
        for name in runnable:
            spec = method_spec(name)
            sizes = chunks.get(name, {})
            inner = {k: v for k, v in sizes.items() if k != planner.IMAGES}
            cost = memory_budget.method_cost(adapter, spec, grid, 1 if spec.paired else count,
                                             {**every[name], **inner}, layers)
            estimate = cost.total(sizes.get(planner.IMAGES, 1), next(iter(inner.values()), 0))
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
                  + f" (estimated peak {estimate / MiB:,.0f} MiB)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gradeclip_utils.budget import parse_bytes

    counts = lambda text: [int(n) for n in text.split(",") if n.strip()]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic",
                        help="'synthetic' (the embedded model, the default) or an open_clip model name (ViT-B-16)")
    parser.add_argument("--pretrained", default="none", help="weights tag for --model; 'none': random weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each case's process")
    parser.add_argument("--batch", type=int, default=None,
                        help="pictures per call (default 1; --evaluate: the evaluation's batch size, default 16)")
    parser.add_argument("--classes", type=int, default=1000, help="rows of the zero-shot classifier")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: the evaluation's)")
    parser.add_argument("--cases", default="*", help="comma-separated case names or patterns (default: all)")
    parser.add_argument("--rise-masks", type=counts, default=[16, 32],
                        help="RISE's mask counts, one case each (default 16,32; extrapolated to the evaluation's 2000)")
    parser.add_argument("--m2ib-steps", type=counts, default=[10],
                        help="M2IB's step counts, one case each (default: the evaluation's 10)")
    parser.add_argument("--memory-budget", type=parse_bytes, default=None,
                        help="the budget the chunks are planned from (2G, 8G, ...; default: the evaluation's)")
    parser.add_argument("--evaluate", type=int, default=0,
                        help="run the evaluation of this many random pictures instead of the cases")
    parser.add_argument("--eval-methods", default="grad_eclip,m2ib", help="the methods of --evaluate")
    parser.add_argument("--plan", action="store_true", help="print the evaluation's chunks per budget, measure nothing")
    parser.add_argument("--in-process", action="store_true",
                        help="every case in this process, not a fresh one each (quick; the peaks are not comparable)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a case is given up")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch is None:
        from gradeclip_utils.evaluation import EvalConfig

        args.batch = EvalConfig.batch_size if args.evaluate else 1
    if args.child:
        Path(args.child_out).write_text(json.dumps(run_child(args)))
        return 0
    if args.plan:
        print_plans(args)
        return 0
    weights = "the embedded synthetic model" if args.model == "synthetic" else (
        f"{args.model}, {'random weights' if args.pretrained.lower() == 'none' else args.pretrained}")
    print(f"model {weights}, {args.precision}, device {args.device}, torch {torch.__version__}, threads "
          f"{args.threads or 'default'}, batch {args.batch}, load average {os.getloadavg()[0]:.1f}")
    started_load = os.getloadavg()
    cases = ["evaluation"] if args.evaluate else case_names(args)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        if args.evaluate:
            record = measure(args, "evaluation", folder)
            records.append(record)
            print(json.dumps(record, indent=2))
        else:
            print("peak MiB: above the model and inputs, " + ("all cases in one process (not comparable)"
                  if args.in_process else "first call of a fresh process") + "; seconds per picture")
            print(f"{'case':24s} {'peak MiB':>10s} {'CPU s/img':>11s} {'wall s/img':>11s} {'/ forward':>10s}")
            forward_cpu = None
            for case in cases:
                record = measure(args, case, folder)
                records.append(record)
                if case == "forward" and "error" not in record:
                    forward_cpu = record["cpu_s"] / args.batch
                print_row(record, args.batch, forward_cpu)
            defaults = eval_config(args)
            for method, target in (("rise", defaults.rise_masks), ("m2ib", defaults.m2ib_steps)):
                estimate = extrapolate(records, method, target)
                if estimate is not None:
                    records.append(estimate)
                    print_row(estimate, args.batch, forward_cpu)
    if args.json:
        settings = {key: value for key, value in vars(args).items() if not key.startswith("child")}
        Path(args.json).write_text(json.dumps({
            "settings": {**settings, "torch": torch.__version__, "machine": platform.machine(),
                         "cpus": os.cpu_count(), "load_average": [started_load[0], os.getloadavg()[0]]},
            "cases": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
