"""How long the explorers take to redraw after a control changes, on the embedded synthetic CLIP.

The explorer of notebook 02 (its first scene and prompts) is made, then the block slider is moved from
code over every block, round after round; a move from code redraws exactly as a browser change does once
its debounce has passed (the debounce itself, 0.3 s by default, is a wait for the end of a burst, not
work, and is not counted). Each move is timed twice:

* **new setting**: the explorer's cached image maps are dropped first, so they are computed again (the
  word importance stays cached, as in use: it does not depend on the block), then the figure is drawn
  and encoded as PNG;
* **setting seen before**: the same move again, with the cached explanation: only the figure.

The same is measured for a prompt typed (one more prompt), the mode switched, the shared colour scale
switched, and the layer viewer's slider (its maps are computed once, so a move only draws). Times are
wall-clock seconds of ``render()`` (median, 90th percentile and maximum over the moves) and the process's
CPU seconds; on a shared machine the CPU time is the steadier number. The load average is printed with the
results: the machine's other work slows the wall time down.

    python benchmarks/explorer.py                    # 5 rounds over the blocks
    python benchmarks/explorer.py --rounds 10 --json explorer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the target the issue sets: a redraw after a slider move well under this on the synthetic model
TARGET_SECONDS = 0.5


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(rows: list[tuple[float, float]]) -> dict[str, float]:
    walls = sorted(w for w, _ in rows)
    cpus = sorted(c for _, c in rows)
    p90 = walls[min(len(walls) - 1, int(round(0.9 * (len(walls) - 1))))]
    return {"n": len(rows), "median_s": statistics.median(walls), "p90_s": p90, "max_s": walls[-1],
            "cpu_median_s": statistics.median(cpus)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all blocks (default 5)")
    parser.add_argument("--prompts", type=int, default=3, help="prompts in the explorer (default 3)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import gradeclip_utils as ge
    from gradeclip_utils import studies
    from gradeclip_utils.synthetic import class_prompts
    from gradeclip_utils.widgets import Explorer, LayerViewer

    model = ge.load_model("synthetic", device="cpu")
    threads = studies.common.tune_threads(model)
    images = studies.default_images(model, n_scenes=6)
    prompts = (studies.common.object_prompts(images[0]) + class_prompts()[0])[:args.prompts]
    explorer = Explorer(model, images, prompts)
    blocks = list(range(explorer.layer.min, explorer.layer.max + 1))

    def move(block: int, fresh: bool) -> None:
        if fresh:
            explorer.clear_cache(words=False)
        explorer.layer.value = block
        assert explorer.error is None and explorer.last["layers"] == [block], explorer.error

    cases: dict[str, list[tuple[float, float]]] = {"slider, new setting": [], "slider, setting seen before": []}
    for _ in range(args.rounds):
        for block in blocks:
            if explorer.layer.value == block:  # a move needs a change
                move(blocks[(blocks.index(block) + 1) % len(blocks)], fresh=False)
            cases["slider, new setting"].append(timed(lambda: move(block, fresh=True)))
            move(blocks[(blocks.index(block) + 1) % len(blocks)], fresh=False)
            cases["slider, setting seen before"].append(timed(lambda: move(block, fresh=False)))

    cases["prompt typed (one more)"] = []
    cases["mode switched"] = []
    cases["shared scale switched"] = []
    extra = class_prompts()[0]
    for r in range(args.rounds):
        explorer.clear_cache()
        text = f"{explorer.prompts.value}; {extra[(r + args.prompts) % len(extra)]}"
        cases["prompt typed (one more)"].append(timed(lambda: setattr(explorer.prompts, "value", text)))
        explorer.clear_cache()
        cases["mode switched"].append(timed(lambda: setattr(explorer.mode, "value", "official" if
                                                             explorer.mode.value == "faithful" else "faithful")))
        cases["shared scale switched"].append(timed(lambda: setattr(explorer.shared, "value",
                                                                     not explorer.shared.value)))
        explorer.prompts.value = "; ".join(prompts)

    viewer = LayerViewer(model, images[0], prompts[0])
    cases["layer viewer slider"] = []
    for _ in range(args.rounds):
        for block in blocks:
            if viewer.layer.value == block:
                viewer.layer.value = blocks[(blocks.index(block) + 1) % len(blocks)]
            cases["layer viewer slider"].append(timed(lambda: setattr(viewer.layer, "value", block)))

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    results = {"model": "synthetic", "device": "cpu", "torch_threads": threads, "cpu_count": os.cpu_count(),
               "load_average": load, "python": platform.python_version(), "prompts": len(prompts),
               "blocks": len(blocks), "target_s": TARGET_SECONDS,
               "cases": {name: summary(rows) for name, rows in cases.items()}}
    print(f"explorer redraws on the synthetic CLIP ({len(prompts)} prompts, {len(blocks)} blocks, "
          f"{threads} torch thread(s), {os.cpu_count()} CPUs, load average {load})")
    print(f"{'case':32} {'n':>4} {'median s':>9} {'p90 s':>7} {'max s':>7} {'cpu s':>7}")
    for name, row in results["cases"].items():
        print(f"{name:32} {row['n']:4d} {row['median_s']:9.3f} {row['p90_s']:7.3f} {row['max_s']:7.3f} "
              f"{row['cpu_median_s']:7.3f}")
    slider = results["cases"]["slider, new setting"]
    verdict = "under" if slider["p90_s"] < TARGET_SECONDS else "NOT under"
    print(f"slider move (new setting): 90% of redraws within {slider['p90_s']:.3f} s, {verdict} the "
          f"{TARGET_SECONDS} s target")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
