"""How many pictures the deletion and insertion curves encode over several tie seeds, per method, on the
embedded synthetic CLIP: the evaluation's own run (``gradeclip_utils.evaluation.evaluate``), with the
image encoder counting what it is given. A picture two tie orders make alike (the same pixels changed at
a step) is encoded once, so the extra tie seeds cost only the pictures whose step boundary falls inside a
tie; separate runs per tie seed would encode ``tie_seeds x 2 x images x 11``. A count, not a timing: the
same on every machine.

    python benchmarks/tie_seeds.py                 # 32 scenes, 3 tie seeds, every method but RISE and M2IB
    python benchmarks/tie_seeds.py -n 100 --methods grad_eclip rise
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import gradeclip_utils as ge
import gradeclip_utils.evaluation as ev
from gradeclip_utils.evaluation import protocols


class Counting:
    """An adapter whose ``encode_image`` counts the pictures (everything else is the adapter's)."""

    def __init__(self, adapter, counter: dict[str, int]):
        self._adapter, self._counter = adapter, counter

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        self._counter["pictures"] += int(pixels.shape[0])
        return self._adapter.encode_image(pixels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=32, help="held-out synthetic scenes")
    parser.add_argument("--tie-seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=[m for m in ev.default_methods() if not ev.method_spec(m).slow])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = ge.load_model("synthetic", device="cpu")
    data = ev.synthetic_set(model, args.n)
    counter = {"pictures": 0}
    real = protocols.perturbation_curves_over_ties  # the project's curves, as the evaluation calls them
    protocols.perturbation_curves_over_ties = lambda adapter, *a, **k: real(Counting(adapter, counter), *a, **k)
    one = 2 * args.n * 11
    separate = args.tie_seeds * one
    print(f"{'method':24s} {'encoded':>8s} {'separate runs':>14s} {'share':>6s}   (one tie seed: {one})")
    total = 0
    for method in args.methods:
        counter["pictures"] = 0
        with tempfile.TemporaryDirectory() as out:
            ev.evaluate(model, data, out, methods=[method], faithfulness=True, sanity_images=0, timing_images=0,
                        progress=False, tie_seeds=args.tie_seeds)
        total += counter["pictures"]
        print(f"{method:24s} {counter['pictures']:8d} {separate:14d} {counter['pictures'] / separate:6.2f}")
    print(f"{'all':24s} {total:8d} {separate * len(args.methods):14d} {total / (separate * len(args.methods)):6.2f}")


if __name__ == "__main__":
    main()
