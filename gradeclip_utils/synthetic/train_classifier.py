"""Train the embedded synthetic classifier (a timm ViT, colour x shape as 35 classes) and evaluate it.

    python -m gradeclip_utils.synthetic.train_classifier --out runs/synthetic_classifier \
        --export data/synthetic_classifier

The defaults are the committed model's recipe. Fixed seed; batch ``i`` holds the training scene ids
``i*B ... i*B+B-1`` (``classifier.classifier_batch``: one object in half of them, 2-4 in the others, the target
uniform over the classes present), so a run is a function of its arguments and of the thread count. The loss is
the cross-entropy against those soft targets; AdamW with a linear warm-up and a cosine decay (the CLIP's
schedule, ``train._lr_at``), gradients clipped at norm 1. The loss and a held-out accuracy monitor go to
``OUT/log.csv``; at the end the model is exported to ``OUT/model`` (and to ``--export``), evaluated
(``evaluate_classifier``: the figures its model card publishes) and the evaluation written to
``OUT/evaluation.json``.

The evaluation uses the scenes of the CLIP's evaluation (``evaluate.OFFSETS``): top-1 accuracy on its 700
held-out single-object scenes, and the Grad-ECLIP localisation of its 300 scenes of 2-4 objects, each explained
for the class logit of its uniquely nameable object ("red circle"), against that object's mask.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..resources import SYNTHETIC_DIR
from .classifier import (CLASS_NAMES, CLASSIFIER_CONFIG, build_classifier, class_index, classifier_batch,
                         init_from_clip, save_classifier)
from .dataset import HELDOUT_SEED_START, images_to_tensor
from .evaluate import MISS_KINDS, OFFSETS, localisation_eval, object_class
from .scenes import generate_scene
from .train import _lr_at, _param_groups

__all__ = ["ClassifierBatches", "accuracy_eval", "evaluate_classifier", "format_classifier_table", "run_command",
           "train_classifier"]

#: held-out block of the training monitor (the CLIP's training monitor uses the same one)
MONITOR_OFFSET = 900_000_000
#: how the classifier's weights start: the embedded CLIP's image tower (and a new head), or timm's initialisation
INITS = ("clip", "random")


class ClassifierBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``i`` is training batch ``start + i`` (``classifier_batch``); use it with
    ``DataLoader(batch_size=None)``."""

    def __init__(self, n_batches: int, batch_size: int, start: int = 0, single_share: float = 0.5) -> None:
        if (start + n_batches) * batch_size > HELDOUT_SEED_START:
            raise ValueError("training scene ids must stay below HELDOUT_SEED_START")
        self.n_batches, self.batch_size, self.start, self.single_share = n_batches, batch_size, start, single_share

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n_batches:
            raise IndexError(i)
        return classifier_batch(self.start + i, self.batch_size, self.single_share)


def _normalise(images: torch.Tensor, config: dict) -> torch.Tensor:
    mean = torch.tensor(config["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["preprocess"]["std"]).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean) / std


def _single_scenes(n: int, offset: int) -> list:
    return [generate_scene(HELDOUT_SEED_START + offset + i, n_objects=1, with_captions=False) for i in range(n)]


@torch.no_grad()
def accuracy_eval(model: torch.nn.Module, n: int = 700, offset: int = OFFSETS["zero_shot"],
                  config: Optional[dict] = None, batch_size: int = 256) -> dict[str, Any]:
    """Top-1 accuracy of a bare classifier (its logits) on ``n`` held-out single-object scenes (by default the
    700 of the CLIP's zero-shot evaluation), with the share of right colours and of right shapes."""
    config = config or CLASSIFIER_CONFIG
    was_training = model.training
    model.eval()
    scenes = _single_scenes(n, offset)
    mean, std = config["preprocess"]["mean"], config["preprocess"]["std"]
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    predicted = []
    for start in range(0, n, batch_size):
        x = images_to_tensor([s.image for s in scenes[start:start + batch_size]], mean, std)
        predicted += model(x.to(device, dtype)).argmax(1).tolist()
    model.train(was_training)
    truth = [class_index(s.objects[0].colour, s.objects[0].shape) for s in scenes]
    names = [CLASS_NAMES[k].split() for k in predicted], [CLASS_NAMES[k].split() for k in truth]
    return {"n": n, "top1": float(np.mean([p == t for p, t in zip(predicted, truth)])),
            "colour": float(np.mean([p[0] == t[0] for p, t in zip(*names)])),
            "shape": float(np.mean([p[1] == t[1] for p, t in zip(*names)])), "chance": 1.0 / len(CLASS_NAMES)}


def evaluate_classifier(model: Any = None, n_accuracy: int = 700, n_localisation: int = 300,
                        tolerance: float = 4.0) -> dict[str, Any]:
    """The model card's figures (``model``: a LoadedModel of the classifier, or a name for ``load_model``; by
    default the embedded one): ``accuracy_eval`` and the Grad-ECLIP localisation (last block, faithful mode,
    the class logit) of the CLIP evaluation's localisation scenes, each explained for its object's class."""
    from .. import load_model

    if model is None or isinstance(model, str):
        model = load_model(model or "synthetic-classifier", device="cpu")
    started = time.time()
    result = {"model": getattr(model, "name", "?"),
              "accuracy": accuracy_eval(model.model, n_accuracy),
              "localisation": localisation_eval(model, n_localisation, tolerance=tolerance, prompt_of=object_class)}
    result["seconds"] = round(time.time() - started, 1)
    return result


def format_classifier_table(result: dict[str, Any]) -> str:
    """The evaluation as the model card prints it (metric, value, reference, n)."""
    acc, loc = result["accuracy"], result["localisation"]
    rows = [("metric", "value", "reference", "n"),
            ("top-1 accuracy, colour x shape", f"{acc['top1']:.1%}", f"chance {acc['chance']:.1%}", acc["n"]),
            ("  colour correct", f"{acc['colour']:.1%}", "", acc["n"]),
            ("  shape correct", f"{acc['shape']:.1%}", "", acc["n"]),
            (f"Grad-ECLIP pointing game (tol. {loc['tolerance_px']:g} px)", f"{loc['pointing']:.1%}", "", loc["n"]),
            ("Grad-ECLIP pointing game (strict)", f"{loc['pointing_strict']:.1%}", "", loc["n"]),
            ("Grad-ECLIP energy pointing game", f"{loc['energy']:.1%}", f"mask area share {loc['area_share']:.1%}",
             loc["n"]),
            ("Grad-ECLIP IoU (map > mean)", f"{loc['iou']:.1%}", "", loc["n"])]
    rows += [(f"  pointing misses: peak on {kind}", f"{loc['misses'][kind]:.1%}", "", loc["n"]) for kind in MISS_KINDS]
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = ["  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, config: dict, lr: float) -> float:
    """One optimisation step (soft-target cross-entropy, gradients clipped to norm 1); the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(_normalise(batch["images"], config))
    loss = -(batch["targets"] * F.log_softmax(logits, dim=1)).sum(1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def train_classifier(out: str | Path, steps: int = 300, batch_size: int = 64, lr: float = 5e-4,
                     weight_decay: float = 0.05, warmup: int = 20, seed: int = 0, threads: int = 2,
                     workers: int = 1, single_share: float = 0.5, eval_every: int = 50, init: str = "clip",
                     export: Optional[str | Path] = None, evaluate: bool = True, progress: bool = True,
                     config: Optional[dict] = None) -> dict[str, Any]:
    """Train the classifier, export it to ``OUT/model`` (and ``export``), evaluate it (``evaluate``:
    ``evaluate_classifier`` into ``OUT/evaluation.json``); returns a summary. See the module docstring.
    ``init``: "clip" (the embedded CLIP's image tower, ``classifier.init_from_clip``, and a new head) or "random"."""
    from tqdm import tqdm  # text progress: readable in a log

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config or CLASSIFIER_CONFIG
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    model = build_classifier(config)  # right after seeding: the initial weights are the seed's first draws
    if init == "clip":
        init_from_clip(model, SYNTHETIC_DIR)
    optimizer = _optimizer(model, lr, weight_decay)
    model.train()
    loader = torch.utils.data.DataLoader(ClassifierBatches(steps, batch_size, single_share=single_share),
                                         batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    started, ema, monitor = time.time(), None, float("nan")
    with open(out / "log.csv", "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["step", "loss", "lr", "elapsed_s", "accuracy"])
        bar = tqdm(total=steps, disable=not progress, dynamic_ncols=True, mininterval=2.0, desc="training")
        for step, batch in enumerate(loader):
            rate = _lr_at(step, steps, lr, warmup)
            loss = _step(model, optimizer, batch, config, rate)
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                monitor = accuracy_eval(model, 140, MONITOR_OFFSET, config)["top1"]
            log.writerow([step + 1, f"{loss:.4f}", f"{rate:.6g}", f"{time.time() - started:.1f}",
                          "" if math.isnan(monitor) else f"{monitor:.3f}"])
            log_file.flush()
            bar.set_postfix(loss=f"{ema:.3f}", acc=f"{monitor:.2f}", refresh=False)
            bar.update(1)
        bar.close()
    model.eval()
    summary = {"steps": steps, "wall_s": round(time.time() - started, 1), "final_loss_ema": ema,
               "accuracy_monitor": monitor, "args": dict(steps=steps, batch_size=batch_size, lr=lr,
                                                         weight_decay=weight_decay, warmup=warmup, seed=seed,
                                                         threads=threads, single_share=single_share, init=init)}
    save_classifier(model, out / "model", config)
    if export:
        save_classifier(model, export, config)
    if evaluate:
        from ..loading import load_model

        result = evaluate_classifier(load_model(str(out / "model"), device="cpu"))
        (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
        summary["evaluation"] = {"top1": result["accuracy"]["top1"], "pointing": result["localisation"]["pointing"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def run_command(parser: Any, args: Any) -> None:
    """``gradeclip synthetic train-classifier`` on its parsed arguments (options in ``cli/commands.py``)."""
    if args.evaluate_only is None and args.out is None:
        parser.error("--out is required (unless --evaluate-only names a model to evaluate)")
    if args.evaluate_only:
        torch.set_num_threads(args.threads)
        result = evaluate_classifier(args.evaluate_only)
        print(format_classifier_table(result))
        return
    summary = train_classifier(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed,
                               threads=args.threads, workers=args.workers, single_share=args.single_share,
                               eval_every=args.eval_every, init=args.init, export=args.export,
                               evaluate=not args.no_evaluate,
                               progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=float))
    if not args.no_evaluate:
        print(format_classifier_table(json.loads((Path(args.out) / "evaluation.json").read_text())))


if __name__ == "__main__":  # the `gradeclip synthetic train-classifier` alias (cli/commands.py declares its options)
    from ..cli import alias

    sys.exit(alias("synthetic train-classifier"))
