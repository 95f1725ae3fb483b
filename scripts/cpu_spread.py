"""How far do the published per-image values move between CPUs and thread counts? A rerunnable measurement.

    python scripts/cpu_spread.py run --out outputs/cpu-spread        # the published run once per configuration
    python scripts/cpu_spread.py analyse outputs/cpu-spread          # spread of every per-image value
    python scripts/cpu_spread.py analyse outputs/cpu-spread --json docs/results/cpu_spread.json
    python scripts/cpu_spread.py analyse outputs/cpu-spread --markdown  # the table of docs/reproducibility.md

``run`` repeats the evaluation behind ``docs/results/`` (its ``config.json``: the scenes, batch size, RISE masks,
M2IB steps and samples, seed and tie seeds; no sanity check and no timing, which are not per-image values) once
per configuration, each in a fresh process. A configuration is the set of vector kernels PyTorch dispatches to
(``ATEN_CPU_CAPABILITY``: ``default``, ``avx2``, ``avx512``, each no higher than the CPU has), the instruction set
oneDNN may use (``ONEDNN_MAX_CPU_ISA``), MKL's matrix-product code path (``MKL_ENABLE_INSTRUCTIONS``,
``MKL_CBWR``), the batch size and the number of threads: this is how one machine imitates the CPUs
that CI and users have. ``analyse`` compares every numeric per-image column of every configuration with the
published CSV (``docs/results/per_image.csv``, which keeps 7 digits) and reports, per kind of column:

- pointing games: how many (image, method) values flip (a near-tied maximum chooses another pixel);
- continuous values (energy, IoU, AUCs, curve points): the largest difference, and how many values move by
  more than rounding (``--rounding``, default 2e-7: the CSV's last digit and the float32 noise of a map) —
  those are orderings of near-tied pixels that changed, which move a deletion or insertion curve by a step.

``--json`` writes the summary that ``tests/evaluation/test_evaluate.py`` reads to set its tolerances and its bound on
reorderings; the page ``docs/results.md`` states the measured spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "results"

# name -> environment (and, for the last two, another batch size: the images of a batch share the encoder's
# matrix products, whose rounding depends on how many rows they have); every capability no higher than the CPU's
CONFIGURATIONS = {
    "avx512-2t": {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "2"},
    "avx512-1t": {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "1"},
    "avx2-2t": {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"},
    "avx2-1t": {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"},
    "default-2t": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"},
    "default-1t": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
    "avx512-onednn-avx2-2t": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"},
    "avx512-onednn-sse41-2t": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2"},
    "avx512-mkl-avx2-2t": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "2"},
    "avx512-mkl-compatible-2t": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "2"},
    "avx512-2t-batch5": {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "2", "batch_size": 5},
    "avx512-2t-batch32": {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "2", "batch_size": 32},
}

CPU_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")

# column kinds of per_image.csv
DISCRETE = ("pointing", "pointing_strict")
KEY_COLUMNS = ("key", "method")


def column_kind(name: str) -> str | None:
    """The kind of a numeric per-image column, or None for identifiers (label, target)."""
    if name in DISCRETE:
        return "pointing"
    if name in ("energy", "iou", "area_share"):
        return "localisation"
    if "_auc_" in name:
        return "auc"
    if name.startswith(("deletion_", "insertion_")):
        return "curve"
    return None


def value_group(column: str, method: str) -> str | None:
    """The group a per-image value's move is measured in: its column's kind, with RISE's deletion and insertion
    values apart (its centred map is a difference of two sums over its masks: near-equal pixels everywhere)."""
    kind = column_kind(column)
    return f"{kind} (rise)" if method == "rise" and kind in ("auc", "curve") else kind


def evaluation_command(config: dict, scenes: int, out: Path, batch_size: int | None = None) -> list[str]:
    """The published run's settings as a command line (sanity check and timing left out)."""
    command = [sys.executable, "-m", "gradeclip_utils.evaluate", "-n", str(scenes),
               "--batch-size", str(batch_size or config["batch_size"]), "--rise-masks", str(config["rise_masks"]),
               "--m2ib-steps", str(config["m2ib_steps"]), "--m2ib-samples", str(config["m2ib_samples"]),
               "--tie-seeds", str(config["tie_seeds"]), "--seed", str(config["seed"]),
               "--tolerance", str(config["tolerance"]), "--sanity-images", "0", "--timing-images", "0",
               "--device", "cpu", "--out", str(out), "--overwrite"]
    if not config["rise_centre"]:
        command.append("--rise-plain")
    return command


def run(out: Path, names: list[str], scenes: int | None) -> None:
    config = json.loads((PUBLISHED / "config.json").read_text())
    scenes = scenes or config["distributed"]["items_per_rank"][0]
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        env = {k: v for k, v in os.environ.items() if k not in CPU_VARIABLES}
        settings = dict(CONFIGURATIONS[name])
        batch_size = settings.pop("batch_size", None)
        env.update(settings, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
        start = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            done = subprocess.run(evaluation_command(config, scenes, out / name, batch_size), cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        print(f"{name}: exit {done.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
        if done.returncode:
            sys.exit(f"{name} failed: see {out / f'{name}.log'}")


def read_table(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as handle:
        return {(row["key"], row["method"]): row for row in csv.DictReader(handle)}


def analyse(folder: Path, reference: Path, rounding: float) -> dict:
    """Every configuration's per-image values against ``reference``: per kind of column, how many values moved
    by more than ``rounding`` and the largest move; the (image, method) pairs with such a move; pointing flips."""
    published = read_table(reference)
    columns = [c for c in next(iter(published.values())) if column_kind(c) is not None]
    summary: dict = {"reference": str(reference.relative_to(ROOT) if reference.is_relative_to(ROOT) else reference),
                     "rounding": rounding, "pairs": len(published), "configurations": {}}
    for name in CONFIGURATIONS:
        path = folder / name / "per_image.csv"
        if not path.exists():
            continue
        table = read_table(path)
        if set(table) != set(published):
            raise SystemExit(f"{name}: other (image, method) pairs than the reference")
        kinds: dict[str, dict] = {}
        moved_pairs, flips = [], 0
        for (key, method), want in published.items():
            row, moved = table[(key, method)], False
            for column in columns:
                kind = column_kind(column)
                difference = abs(float(row[column]) - float(want[column]))
                if kind == "pointing":
                    flips += difference > 0
                    continue
                group = value_group(column, method)
                entry = kinds.setdefault(group, {"values": 0, "moved": 0, "largest": 0.0, "where": None})
                entry["values"] += 1
                if difference > rounding:
                    entry["moved"] += 1
                    moved = True
                if difference > entry["largest"]:
                    entry["largest"], entry["where"] = difference, f"{key} {method} {column}"
            if moved:
                moved_pairs.append([key, method])
        summary["configurations"][name] = {"environment": CONFIGURATIONS[name], "flips": flips,
                                           "moved_pairs": moved_pairs, "kinds": kinds}
    if not summary["configurations"]:
        raise SystemExit(f"no configuration's per_image.csv under {folder}")
    results = summary["configurations"].values()
    groups = sorted({g for c in results for g in c["kinds"]})
    summary["worst"] = {
        "largest": {g: max(c["kinds"][g]["largest"] for c in results) for g in groups},
        "moved_pair_share": max(len(c["moved_pairs"]) for c in results) / len(published),
        "flip_share": max(c["flips"] for c in results) / (len(published) * len(DISCRETE)),
    }
    return summary


def report(summary: dict) -> str:
    lines = [f"reference {summary['reference']} ({summary['pairs']} image-method pairs), rounding "
             f"{summary['rounding']:g}",
             f"{'configuration':<26} {'kind':<18} {'values':>7} {'moved':>6} {'largest':>10}  where"]
    for name, result in summary["configurations"].items():
        lines.append(f"{name:<26} {'pointing flips':<18} {summary['pairs'] * len(DISCRETE):>7} {result['flips']:>6}")
        lines.append(f"{name:<26} {'pairs moved':<18} {summary['pairs']:>7} {len(result['moved_pairs']):>6}")
        for group, entry in sorted(result["kinds"].items()):
            lines.append(f"{name:<26} {group:<18} {entry['values']:>7} {entry['moved']:>6} {entry['largest']:>10.3g}"
                         f"  {entry['where'] or '-'}")
    return "\n".join(lines)


def markdown_table(summary: dict) -> str:
    """One row per configuration: its environment, pointing flips, pairs moved and the largest move per kind."""
    groups = sorted(summary["worst"]["largest"])
    lines = ["| configuration | environment | pointing flips | pairs moved (of %d) | " % summary["pairs"]
             + " | ".join(f"largest move: {g}" for g in groups) + " |",
             "|---|---|---:|---:|" + "---:|" * len(groups)]
    for name, result in summary["configurations"].items():
        environment = ", ".join(f"`{k}={v}`" for k, v in result["environment"].items())
        lines.append(f"| {name} | {environment} | {result['flips']} | {len(result['moved_pairs'])} | "
                     + " | ".join(f"{result['kinds'][g]['largest']:.2g}" for g in groups) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="the published run once per configuration")
    runner.add_argument("--out", type=Path, default=ROOT / "outputs" / "cpu-spread")
    runner.add_argument("--configs", nargs="+", choices=sorted(CONFIGURATIONS), default=list(CONFIGURATIONS))
    runner.add_argument("-n", type=int, default=None, help="scenes (default: the published run's)")
    analyser = commands.add_parser("analyse", help="the spread of every per-image value")
    analyser.add_argument("folder", type=Path)
    analyser.add_argument("--reference", type=Path, default=PUBLISHED / "per_image.csv")
    analyser.add_argument("--rounding", type=float, default=1e-5,
                          help="a move above this is more than float noise (default 1e-5)")
    analyser.add_argument("--json", type=Path, default=None, help="write the summary here")
    analyser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the report")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.out, args.configs, args.n)
        return
    summary = analyse(args.folder, args.reference, args.rounding)
    print(markdown_table(summary) if args.markdown else report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
