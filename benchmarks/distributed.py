"""Images per second on one process and on several (torchrun), side by side in one run.

Two workloads, each run as the commands users run, on the same generated images:

* ``explain``: ``gradeclip explain-dataset`` (Grad-ECLIP maps of every image against ``--prompts`` prompts,
  native resolution, written to shards);
* ``evaluate``: ``python -m gradeclip_utils.evaluate --dataset folder`` with Grad-ECLIP and its deletion
  and insertion curves (one map and 22 perturbed forwards per image); no sanity check, no timing.

Each command reports the throughput of its main phase in ``run.json`` (images, or image x method results,
divided by the slowest rank's time from the synchronised start to its last result; start-up, model
loading and the merge are left out), and the CPU time of that phase summed over the ranks (the steadier
number on a shared machine); the wall time of the whole command is printed beside it. The
outputs of every configuration are compared with the one-process outputs (shards byte for byte,
``per_image.csv`` value for value).

CPU (the default): 1 process x 1 thread, 2 processes x 1 thread (gloo), and 1 process x 2 threads (the
same cores as the two processes). Ratio: images/s over the 1 x 1 images/s; scaling efficiency: the
ratio divided by the cores used (processes x threads).

    python benchmarks/distributed.py                                  # ViT-B-16, random weights, CPU
    python benchmarks/distributed.py --model synthetic --images 64    # the small embedded model

CUDA (a GPU node): 1 to N GPUs (one process each, NCCL, 4 loader workers each), and on one GPU the batch
size sweep next to the same batch on the CPU (all its cores):

    python benchmarks/distributed.py --device cuda --nproc 1,2,4,8 --sweep 8,16,32,64,128 --images 2048
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a photo of a dog", "a photo of a cat", "a red car", "a diagram", "a bowl of fruit", "a mountain lake",
           "a person riding a bicycle", "a city street at night", "an empty room", "a blue bird"]


def make_data(folder: Path, count: int, size: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """``count`` random pictures of ``size`` x ``size``, a prompts file, and an evaluation CSV."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(images / f"{i:05d}.png")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    table = images / "eval.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt"])
        for i in range(count):
            writer.writerow([f"{i:05d}.png", PROMPTS[i % 4]])
    return images, prompts, table


def command(workload: str, processes: int, paths: dict[str, Path], out: Path, args, *, device: str, threads: int,
            batch: int, workers: int) -> list[str]:
    common = ["--model", args.model, "--device", device, "--batch-size", str(batch), "--threads", str(threads),
              "--workers", str(workers), "--out", str(out)]
    if args.pretrained:
        common += ["--pretrained", args.pretrained]
    if workload == "explain":
        module = ["-m", "gradeclip_utils.cli", "explain-dataset", str(paths["images"]), "--prompts", str(paths["prompts"]),
                  "--shard-size", str(max(batch, args.shard_size))]
    else:
        module = ["-m", "gradeclip_utils.evaluate", "--dataset", "folder", "--data", str(paths["table"]), "-n",
                  str(args.eval_images), "--methods", "grad_eclip", "--sanity-images", "0", "--timing-images", "0"]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc-per-node", str(processes)]
    return launcher + module + common


def run_case(workload: str, processes: int, threads: int, paths, scratch: Path, args, *, device: str, batch: int,
             workers: int) -> dict:
    out = scratch / f"{workload}-{device}-p{processes}-t{threads}-b{batch}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command(workload, processes, paths, out, args, device=device, threads=threads, batch=batch,
                                  workers=workers), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{workload} on {processes} process(es) failed:\n{done.stderr[-4000:]}")
    stats = json.loads((out / "run.json").read_text())
    count = stats["images"] if workload == "explain" else stats["results"]
    return {"workload": workload, "device": device, "processes": processes, "threads": threads, "batch": batch,
            "workers": workers, "images": count, "seconds": stats["seconds"],
            "images_per_second": count / stats["seconds"], "cpu_seconds_per_image": stats["cpu_seconds"] / count,
            "wall_seconds": wall, "out": str(out)}


def same_outputs(workload: str, a: str, b: str) -> str:
    """Whether two runs wrote the same results: 'identical', the largest difference, or 'DIFFERENT'."""
    a, b = Path(a), Path(b)
    if workload == "explain":
        names = sorted(p.name for p in (a / "shards").iterdir())
        if names != sorted(p.name for p in (b / "shards").iterdir()):
            return "DIFFERENT shard files"
        if all((a / "shards" / n).read_bytes() == (b / "shards" / n).read_bytes() for n in names):
            return "identical"
        from safetensors.torch import load_file

        worst = 0.0
        for n in names:
            x, y = load_file(str(a / "shards" / n)), load_file(str(b / "shards" / n))
            worst = max(worst, max(float((x[k] - y[k]).abs().max()) for k in x))
        return f"max abs difference {worst:.2e}"
    with open(a / "per_image.csv", newline="") as fa, open(b / "per_image.csv", newline="") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    if [(r["key"], r["method"]) for r in ra] != [(r["key"], r["method"]) for r in rb]:
        return "DIFFERENT rows"
    numbers = [k for k in ra[0] if k not in ("key", "prompt", "method")]
    worst = max(abs(float(x[k]) - float(y[k])) for x, y in zip(ra, rb) for k in numbers)
    return "identical" if worst == 0 else f"max abs difference {worst:.2e}"


def table(rows: list[dict], base: dict) -> list[str]:
    lines = ["| workload | device | processes x threads | batch | images | s (main phase) | images/s | ratio | "
             "scaling efficiency | CPU s / image | wall s | outputs vs 1 process |", "|" + "---|" * 12]
    for row in rows:
        ratio = row["images_per_second"] / base[row["workload"]]["images_per_second"]
        lines.append(f"| {row['workload']} | {row['device']} | {row['processes']} x {row['threads']} | {row['batch']} | "
                     f"{row['images']} | {row['seconds']:.2f} | {row['images_per_second']:.3g} | {ratio:.2f}x | "
                     f"{ratio / (row['processes'] * row['threads']):.0%} | {row['cpu_seconds_per_image']:.3g} | "
                     f"{row['wall_seconds']:.1f} | "
                     f"{row.get('same', '')} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip name or 'synthetic' (default ViT-B-16)")
    parser.add_argument("--pretrained", default=None, help="weights (default: random weights drawn once with seed 0 and "
                        "saved, so that every process loads the same)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=16, help="images for explain (default 16)")
    parser.add_argument("--eval-images", type=int, default=8, help="images for evaluate (default 8)")
    parser.add_argument("--size", type=int, default=224, help="side of the generated pictures (default 224)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--workloads", default="explain,evaluate")
    parser.add_argument("--nproc", default=None, help="CUDA: process counts, e.g. 1,2,4,8 (default: 1 and all GPUs)")
    parser.add_argument("--sweep", default=None, help="CUDA: batch sizes on one GPU, with the same batch on the CPU")
    parser.add_argument("--workers", type=int, default=None, help="loader workers per process (CPU 0, CUDA 4)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # this checkout's package, as in the commands run below
    workloads = [w for w in args.workloads.split(",") if w]
    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="gradeclip-dist-bench-"))
    rows: list[dict] = []
    try:
        images, prompts, table_path = make_data(scratch / "data", max(args.images, args.eval_images), args.size)
        paths = {"images": images, "prompts": prompts, "table": table_path}
        if args.pretrained is None and args.model != "synthetic":  # one set of random weights for every process
            import torch
            from safetensors.torch import save_file

            from gradeclip_utils import load_model

            torch.manual_seed(0)
            model = load_model(args.model, None, device="cpu").model
            args.pretrained = str(scratch / "random-weights.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.pretrained)
            args.weights_note = "random weights (seed 0), one checkpoint for every process"
            del model
        if args.images < max(args.images, args.eval_images):  # explain uses the first --images pictures only
            keep = images.parent / "explain"
            keep.mkdir()
            for i in range(args.images):
                shutil.copy(images / f"{i:05d}.png", keep / f"{i:05d}.png")
            paths["images"] = keep
        if args.device == "cpu":
            workers = args.workers if args.workers is not None else 0
            cases = [(1, 1), (2, 1), (1, 2)]
            for workload in workloads:
                for processes, threads in cases:
                    print(f"{workload}: {processes} process(es) x {threads} thread(s) ...", file=sys.stderr, flush=True)
                    rows.append(run_case(workload, processes, threads, paths, scratch, args, device="cpu",
                                         batch=args.batch, workers=workers))
        else:
            import torch

            if not torch.cuda.is_available():
                parser.error("--device cuda: no CUDA device")
            gpus = torch.cuda.device_count()
            counts = [int(n) for n in args.nproc.split(",")] if args.nproc else sorted({1, gpus})
            workers = args.workers if args.workers is not None else 4
            cpu_threads = os.cpu_count() or 1
            for workload in workloads:
                for processes in counts:
                    rows.append(run_case(workload, processes, 1, paths, scratch, args, device="cuda",
                                         batch=args.batch, workers=workers))
                for batch in [int(b) for b in args.sweep.split(",")] if args.sweep else []:
                    rows.append(run_case(workload, 1, 1, paths, scratch, args, device="cuda", batch=batch,
                                         workers=workers))
                    rows.append(run_case(workload, 1, cpu_threads, paths, scratch, args, device="cpu", batch=batch,
                                         workers=0))
        base = {}
        for row in rows:
            base.setdefault((row["workload"], row["device"]), row)
            if row["processes"] > 1 or row is not base[(row["workload"], row["device"])]:
                first = base[(row["workload"], row["device"])]
                row["same"] = same_outputs(row["workload"], first["out"], row["out"]) if row["batch"] == first["batch"] \
                    else "other batch"
        firsts = {row["workload"]: row for row in rows if row["processes"] == 1 and row["threads"] == 1}
        import platform

        import torch

        weights = getattr(args, "weights_note", None) or args.pretrained or "its own weights"
        print(f"\n{args.model} ({weights}), {args.size} x {args.size} pictures, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
              f"load average (1 min) before the run {load_before:.1f}, after it {os.getloadavg()[0]:.1f}\n")
        print("\n".join(table(rows, firsts)))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
