"""``gradeclip evaluate`` (and ``python -m gradeclip_utils.evaluate``) on its parsed options (declared in
``cli/commands.py``): the model and the data set loaded, the options made into an ``EvalConfig``, the run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..explain import check_score
from ..jobs import distributed
from ..methods.scores import DEFAULT_SCORE
from ..records import weights_digest
from .config import EvalConfig
from .datasets import folder_set, imagenet_set, synthetic_set
from .plots import write_doc
from .runner import evaluate


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``gradeclip evaluate`` on its parsed arguments (on every rank under torchrun); the options are declared in
    ``cli/commands.py``. ``argv``: the command's own arguments, for the command line the summary records."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"outputs/eval-{args.dataset}")
    context = distributed.init(args.device, timeout_minutes=args.dist_timeout)
    try:
        with context.guard(out):  # a failing rank records its error for the others
            summary = _run(parser, args, argv, out, context)
    finally:
        context.close()
    if context.is_main:
        print(summary["markdown"])
        print(f"\nwritten to {out}" + (f" and {args.doc}" if args.doc else ""), file=sys.stderr)
    return summary


def _names(value: str | None) -> list[str] | None:
    """A comma-separated list of method names (None: the option was not given)."""
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None,
                     device: torch.device) -> EvalConfig:
    """The run's ``EvalConfig`` from the command's options (checked before the model is loaded); ``device``:
    where the model runs (DataLoader workers by default on CUDA only, where they do not compete with the model
    for cores)."""
    command = f"{parser.prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    return EvalConfig(methods=_names(args.methods), batch_size=args.batch_size, tolerance=args.tolerance,
                      rise_masks=args.rise_masks, rise_centre=not args.rise_plain, m2ib_steps=args.m2ib_steps,
                      m2ib_samples=args.m2ib_samples, seed=args.seed, sanity_images=args.sanity_images,
                      sanity_methods=_names(args.sanity_methods), timing_images=args.timing_images,
                      timing_repeats=args.timing_repeats, faithfulness=not args.no_faithfulness,
                      command=command.strip(), overwrite=args.overwrite, protocol=args.protocol,
                      tie_seeds=args.tie_seeds, workers=workers, score=args.score or DEFAULT_SCORE,
                      memory_budget=args.memory_budget)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None, out: Path,
         context: distributed.Context) -> dict[str, Any]:
    from ..loading import load_model

    config = config_from_args(parser, args, argv, context.device)
    if args.dataset != "synthetic" and args.data is None:
        parser.error(f"--dataset {args.dataset} needs --data")
    model = load_model(args.model, args.pretrained, device=context.device, precision=args.precision)
    if args.score is not None:  # given: one the model cannot give is refused (left out: the model's own)
        check_score(model, args.score)
    if args.dataset == "synthetic":
        data = synthetic_set(model, args.n)
    elif args.dataset == "imagenet":
        out.mkdir(parents=True, exist_ok=True)
        with context.main_first():  # rank 0 builds the classifier cache, the other ranks read it
            data = imagenet_set(model, Path(args.data), args.n, templates=args.templates, target=args.target,
                                cache=out / f"classifier-{args.templates}-{weights_digest(model.model)}.pt")
    else:
        data = folder_set(model, Path(args.data), args.n)
    summary = evaluate(model, data, out, config=config, context=context)
    if args.doc and context.is_main:
        write_doc(summary, out, args.doc)
    return summary
