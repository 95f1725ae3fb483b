"""Train the synthetic CLIP on generated scenes with a contrastive loss.

    python -m gradeclip_utils.synthetic.train --out runs/synthetic_clip [--steps 3000] [--resume]
    python -m gradeclip_utils.synthetic.evaluate --select runs/synthetic_clip/snapshots --export data/synthetic_clip

The defaults are the committed model's recipe: 3000 steps with an export every 250 steps to
``OUT/snapshots/step_N``; the second command picks the snapshot with the best Grad-ECLIP pointing game
(among those with zero-shot accuracy >= 95%) on validation scenes of its own and copies it into place.

Fixed seed; the data stream is a function of the step (batch ``i`` holds scene ids
``i*B ... i*B+B-1``), so ``--resume`` continues exactly where the last checkpoint stopped. Every
``--checkpoint-minutes`` the model, optimizer and step go to ``OUT/checkpoint.pt``; the loss goes to
``OUT/log.csv``; at the end the model is exported in open_clip's ``local-dir:`` format to
``OUT/model`` (and to ``--export`` if given, e.g. ``data/synthetic_clip``).

The loss is CLIP's symmetric cross-entropy, with two changes that the exact ground truth allows:
each image is contrasted with the B true captions of the batch plus hard negatives of each scene
(wrong colour/shape/count/binding/relation), and every caption that is *true* of an image (e.g. two
scenes that both contain a red circle) counts as a positive (soft targets spread over the true
pairs) instead of a false negative.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import OPEN_CLIP_CONFIG, build_model, image_mean_std, save_model
from .dataset import HELDOUT_SEED_START, TRAIN_MIX, SyntheticBatches, images_to_tensor

__all__ = ["contrastive_loss", "encode_text_trimmed", "train", "run_command", "zero_shot_accuracy"]


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, truth: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Multi-positive symmetric CLIP loss.

    ``image_features`` (B, D) and ``text_features`` (T, D) are L2-normalised, T >= B, and the first B
    texts are the images' own captions (so ``truth[i, i]`` is true); ``truth`` (B, T) marks every true
    (image, text) pair. Image->text: cross-entropy over all T texts against the uniform distribution on
    the true ones. Text->image: the same over the B images, for the first B texts.
    """
    B = image_features.shape[0]
    truth = truth.to(image_features.dtype)
    logits = logit_scale * image_features @ text_features.t()
    t_i2t = truth / truth.sum(1, keepdim=True).clamp_min(1)
    loss_i2t = -(t_i2t * F.log_softmax(logits, dim=1)).sum(1).mean()
    pos = truth[:, :B].t()
    t_t2i = pos / pos.sum(1, keepdim=True).clamp_min(1)
    loss_t2i = -(t_t2i * F.log_softmax(logits[:, :B].t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def encode_text_trimmed(model, tokens: torch.Tensor, bucket_edges: tuple[int, ...] = (8, 12, 16)) -> torch.Tensor:
    """``model.encode_text(tokens)`` for an open_clip ``CLIP`` with causal text attention and argmax
    (EOT) pooling, computed on sequences cut after their longest EOT in each length bucket.

    The EOT output of a causal transformer does not depend on the padding after it, so the result equals
    the full-length computation (up to float rounding; tested) at a fraction of the cost: most training
    captions are 4-8 tokens long against a context of 32.
    """
    if getattr(model, "text_pool_type", "argmax") != "argmax" or not hasattr(model, "attn_mask"):
        return model.encode_text(tokens)
    eot = tokens.argmax(dim=-1)
    length = eot + 1
    ctx = tokens.shape[1]
    edges = sorted({min(e, ctx) for e in bucket_edges} | {ctx})
    out = None
    lo = 0
    for hi in edges:
        idx = torch.nonzero((length > lo) & (length <= hi)).flatten()
        lo = hi
        if idx.numel() == 0:
            continue
        L = int(length[idx].max())
        t = tokens[idx, :L]
        x = model.token_embedding(t) + model.positional_embedding[:L]
        mask = model.attn_mask[:L, :L] if model.attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        x = x[torch.arange(len(idx)), eot[idx]]
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
        if out is None:
            out = x.new_zeros(tokens.shape[0], x.shape[1])
        out = out.index_copy(0, idx, x)
    return out


def _tokenizer(config: dict):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=config["model_cfg"]["text_cfg"]["context_length"])


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _lr_at(step: int, total: int, base: float, warmup: int, final_frac: float = 0.02) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, n: int = 140, offset: int = 900_000_000,
                       config: Optional[dict] = None) -> float:
    """Quick colour x shape zero-shot top-1 on ``n`` held-out single-object scenes (training monitor;
    the reported figures come from ``evaluate``)."""
    from .captions import class_prompts
    from .scenes import generate_scene

    cfg = config or OPEN_CLIP_CONFIG
    mean, std = image_mean_std(cfg)
    prompts, labels = class_prompts()
    was_training = model.training
    model.eval()
    tf = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    scenes = [generate_scene(HELDOUT_SEED_START + offset + i, n_objects=1, with_captions=False)
              for i in range(n)]
    x = images_to_tensor([s.image for s in scenes], mean, std)
    imf = F.normalize(model.encode_image(x), dim=-1)
    pred = (imf @ tf.t()).argmax(1).tolist()
    truth = [labels.index((s.objects[0].colour, s.objects[0].shape)) for s in scenes]
    model.train(was_training)
    return float(np.mean([p == t for p, t in zip(pred, truth)]))


def _save_checkpoint(path: Path, model, optimizer, step: int, args: dict, elapsed: float, config: dict):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "args": args, "elapsed": elapsed, "config": config}, tmp)
    tmp.replace(path)


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``_param_groups``, fused where this PyTorch build can."""
    try:
        return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _resume(path: Path, model, optimizer, args: dict) -> tuple[int, float]:
    """Load the checkpoint at ``path`` into ``model`` and ``optimizer``: the step it was written at and the
    seconds trained until then ((0, 0.0) when there is none). A note when it was written with other arguments."""
    if not path.exists():
        return 0, 0.0
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if ck["args"] != args:
        print(f"note: resuming with different arguments: {ck['args']} -> {args}", file=sys.stderr)
    return int(ck["step"]), float(ck.get("elapsed", 0.0))


def _loader(steps: int, batch_size: int, start: int, negatives: int, mix: Optional[dict[str, float]],
            workers: int) -> torch.utils.data.DataLoader:
    """Batches ``start`` to ``steps - 1`` of the data stream, in order (batch ``i`` is the same whatever the start)."""
    data = SyntheticBatches(steps, batch_size, start=0, negatives=negatives, mix=mix)
    subset = torch.utils.data.Subset(data, range(start, steps))
    return torch.utils.data.DataLoader(subset, batch_size=None, shuffle=False, num_workers=workers,
                                       prefetch_factor=4 if workers else None, persistent_workers=False)


def _open_log(path: Path, resume: bool, start: int):
    """``OUT/log.csv`` open for writing, and its CSV writer: a new log with its header, or, when resuming, the
    existing one without the rows written after the checkpoint (step ``start``)."""
    new_log = not (resume and path.exists())
    if not new_log:  # drop log rows written after the checkpoint we resume from
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([r for r in rows if not r[0].isdigit() or int(r[0]) <= start])
    log_f = open(path, "w" if new_log else "a", newline="")
    log = csv.writer(log_f)
    if new_log:
        log.writerow(["step", "loss", "lr", "logit_scale", "elapsed_s", "zero_shot"])
    return log_f, log


def _step(model, tokenizer, optimizer, batch: dict, mean, std, lr: float) -> float:
    """One optimisation step on ``batch`` at learning rate ``lr`` (gradients clipped to norm 1, the logit
    scale kept at most 100); returns the batch's loss."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    x = (batch["images"].float().div_(255.0) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    tokens = tokenizer(batch["texts"])
    imf = F.normalize(model.encode_image(x), dim=-1)
    txf = F.normalize(encode_text_trimmed(model, tokens), dim=-1)
    loss = contrastive_loss(imf, txf, batch["truth"], model.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def _stop_reason(done: int, steps: int, stop_at: Optional[int], max_minutes: Optional[float],
                 t0: float) -> Optional[str]:
    """Why the run stops early after ``done`` steps (``--stop-at``, the time limit), or None."""
    if done < steps and stop_at is not None and done >= stop_at:
        return "--stop-at"
    if done < steps and max_minutes is not None and time.time() - t0 > 60 * max_minutes:
        return "time limit"
    return None


def _finish(model, out: Path, config: dict, export: Optional[str], summary: dict) -> None:
    """Export the model to ``OUT/model`` (and to ``export``) when every step is done; write ``OUT/summary.json``."""
    if summary["steps_done"] >= summary["steps"]:
        model.eval()
        save_model(model, out / "model", config)
        if export:
            save_model(model, export, config)
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)


def train(out: str | Path, steps: int = 3000, batch_size: int = 128, lr: float = 1e-3,
          weight_decay: float = 0.1, warmup: int = 100, seed: int = 0, threads: int = 2,
          checkpoint_minutes: float = 3.0, resume: bool = False, negatives: int = 2,
          workers: int = 1, eval_every: int = 100, export: Optional[str] = None,
          max_minutes: Optional[float] = None, stop_at: Optional[int] = None,
          progress: bool = True, config: Optional[dict] = None, snapshot_every: int = 0,
          mix: Optional[dict[str, float]] = None) -> dict:
    """Train (or resume) and export; returns a summary dict. See the module docstring.

    ``config``: an open_clip config in the ``OPEN_CLIP_CONFIG`` format (default: that one);
    ``snapshot_every``: also export the model every that many steps to ``OUT/snapshots/step_N``;
    ``mix``: probabilities of the training example kinds (default: ``TRAIN_MIX``).
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    args = dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                seed=seed, negatives=negatives)
    config = config or OPEN_CLIP_CONFIG
    if config != OPEN_CLIP_CONFIG:
        args["config"] = config
    if mix is not None and mix != TRAIN_MIX:
        args["mix"] = dict(mix)
    mean, std = image_mean_std(config)
    # built right after seeding: the initial weights are the seeded generator's first draws
    model = build_model(config)
    tokenizer = _tokenizer(config)
    optimizer = _optimizer(model, lr, weight_decay)
    ckpt_path = out / "checkpoint.pt"
    start, elapsed = _resume(ckpt_path, model, optimizer, args) if resume else (0, 0.0)
    model.train()

    loader = _loader(steps, batch_size, start, negatives, mix, workers)
    log_f, log = _open_log(out / "log.csv", resume, start)
    t0 = time.time() - elapsed
    last_ckpt = time.time()
    bar = tqdm(total=steps, initial=start, disable=not progress, dynamic_ncols=True, mininterval=2.0)
    ema, step, zs = None, start, float("nan")
    for step, batch in enumerate(loader, start=start):
        cur_lr = _lr_at(step, steps, lr, warmup)
        lv = _step(model, tokenizer, optimizer, batch, mean, std, cur_lr)
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        done = step + 1
        if eval_every and (done % eval_every == 0 or done == steps):
            zs = zero_shot_accuracy(model, tokenizer)
            model.train()
        log.writerow([done, f"{lv:.4f}", f"{cur_lr:.6g}", f"{model.logit_scale.exp().item():.2f}",
                      f"{time.time() - t0:.1f}", "" if math.isnan(zs) else f"{zs:.3f}"])
        bar.set_postfix(loss=f"{ema:.3f}", zs=f"{zs:.2f}", refresh=False)
        bar.update(1)
        stop = _stop_reason(done, steps, stop_at, max_minutes, t0)  # with a checkpoint to resume from
        if stop or time.time() - last_ckpt > 60 * checkpoint_minutes or done == steps:
            log_f.flush()
            _save_checkpoint(ckpt_path, model, optimizer, done, args, time.time() - t0, config)
            last_ckpt = time.time()
        if snapshot_every and done % snapshot_every == 0:
            save_model(model, out / "snapshots" / f"step_{done}", config)
        if stop:
            print(f"stopping at step {done} ({stop}); continue with --resume", file=sys.stderr)
            break
    bar.close()
    log_f.close()
    step_done = step + 1 if steps > start else start
    summary = {"steps_done": step_done, "steps": steps, "wall_s": round(time.time() - t0, 1),
               "final_loss_ema": ema, "zero_shot_monitor": zs, "args": args}
    _finish(model, out, config, export, summary)
    return summary


def run_command(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``gradeclip synthetic train`` on its parsed arguments (the options are declared in ``cli.py``)."""
    config = None
    overrides = dict(a.vision)
    if overrides:
        config = copy.deepcopy(OPEN_CLIP_CONFIG)
        config["model_cfg"]["vision_cfg"].update(overrides)
        try:
            build_model(config)
        except Exception as e:  # an unknown key or a bad value: say so before any work
            p.error(f"--vision: open_clip cannot build this image tower: {e}")
    mix = None
    if a.mix:
        shares = dict(a.mix)
        unknown = sorted(set(shares) - set(TRAIN_MIX))
        if unknown or any(not math.isfinite(v) or v < 0 for v in shares.values()):
            p.error(f"--mix: kinds are {', '.join(TRAIN_MIX)} with shares >= 0 (got {shares})")
        mix = {**TRAIN_MIX, **shares}
        if sum(mix.values()) <= 0:
            p.error("--mix: the shares sum to zero")
    summary = train(a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                    warmup=a.warmup, seed=a.seed, threads=a.threads, checkpoint_minutes=a.checkpoint_minutes,
                    resume=a.resume, negatives=a.negatives, workers=a.workers,
                    eval_every=a.eval_every, export=a.export, max_minutes=a.max_minutes, stop_at=a.stop_at,
                    progress=not a.no_progress, config=config, snapshot_every=a.snapshot_every, mix=mix)
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":  # the `gradeclip synthetic train` alias (cli.py declares its options)
    from ..cli import alias

    sys.exit(alias("synthetic train"))
