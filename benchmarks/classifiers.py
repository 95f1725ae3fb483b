"""What explaining a ViT image classifier's classes costs next to one forward of the same images.

A timm classifier with random weights (``--model``, default ViT-B/16 with ImageNet's 1,000 classes), B images
at its own size; cases, each a ratio to the model's own forward (``model(pixels)`` under ``no_grad``):
Grad-ECLIP maps of the class logit for K classes (K = 1, 10, 100, 1000 by default: one forward with the
graph from the last block, one batched backward of K one-hot cotangents), of the class probability (the
softmax over all classes) at the largest K, and the public ``explain_image`` with class indices. The aim
named for classifiers: all 1,000 classes for at most 1.5 x one forward.

Timing as in ``speed.py`` (``gradeclip_utils.timing``): a warm-up, then the cases round-robin ``--repeats``
times, the median kept; on the CPU wall and process CPU time.

    python benchmarks/classifiers.py                       # CPU, B=2
    python benchmarks/classifiers.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from gradeclip_utils.timing import Case, Meter, run_cases

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="a timm class-token ViT (random weights)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--batch", type=int, default=None, help="images B (default: 2 on the CPU, 32 on CUDA)")
    parser.add_argument("--classes", default="1,10,100,1000", help="the K values (classes explained)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    import timm

    from gradeclip_utils import explain_image, wrap_model
    from gradeclip_utils.methods.grad_eclip import image_maps
    from gradeclip_utils.session import explaining

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = timm.create_model(args.model, pretrained=False).to(device).eval()
    loaded = wrap_model(model)
    adapter = loaded.adapter
    batch = args.batch or (32 if device.type == "cuda" else 2)
    counts = sorted(int(k) for k in args.classes.split(","))
    if counts[-1] > adapter.num_classes:
        raise SystemExit(f"{args.model} has {adapter.num_classes} classes: K = {counts[-1]} is too many")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, *adapter.image_size, generator=generator).to(device)
    rows = torch.eye(adapter.num_classes, device=device)

    def explained(k: int, score: str = "logit"):
        def call():
            with explaining(model):
                return image_maps(adapter, pixels, rows[:k], score=score)
        return call

    def forward():
        with torch.no_grad():
            return model(pixels)

    base = Case("plain forward: model(pixels)", "image", forward)
    cases = [base] + [Case("Grad-ECLIP maps, class logit", "image", explained(k), k=k) for k in counts]
    cases.append(Case("Grad-ECLIP maps, class probability", "image", explained(counts[-1], "probability"),
                      k=counts[-1]))
    cases.append(Case("explain_image (public API, class indices)", "image",
                      lambda: explain_image(loaded, pixels, list(range(counts[-1])), batch_size=batch, progress=False),
                      k=counts[-1]))
    run_cases(cases, Meter(device), args.repeats, 600.0, log)
    cpu = device.type != "cuda"
    print(f"\n{args.model} ({adapter.num_classes} classes, {adapter.image_size[0]} x {adapter.image_size[1]} px), "
          f"B = {batch}, {device}" + (f", {torch.get_num_threads()} threads" if cpu else ""))
    header = f"{'case':44s} {'K':>5s} {'wall s':>9s} {'wall/plain':>10s}" + (
        f" {'cpu s':>9s} {'cpu/plain':>10s}" if cpu else "")
    print(header + "\n" + "-" * len(header))
    for case in cases:
        line = f"{case.name:44s} {'' if case.k is None else case.k:>5} {case.wall:9.3f} {case.wall / base.wall:9.2f}x"
        print(line + (f" {case.cpu:9.3f} {case.cpu / base.cpu:9.2f}x" if cpu else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"model": args.model, "batch": batch, "device": str(device),
                       "cases": [case.record(base) for case in cases]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
