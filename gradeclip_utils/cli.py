"""Command line: ``gradeclip explain IMAGE PROMPT [PROMPT ...] --out fig.png``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from . import __version__


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated block indices, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradeclip", description="Grad-ECLIP explanations for CLIP models.")
    parser.add_argument("--version", action="version", version=f"gradeclip_utils {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    explain = commands.add_parser("explain", help="heat maps of an image against prompts, and word importance")
    explain.add_argument("image", help="image file")
    explain.add_argument("prompts", nargs="+", help="one or more text prompts")
    explain.add_argument("--model", default="synthetic",
                         help="a model as load_model names it: an open_clip name (ViT-B-16, RN50), a model folder, "
                              "hf:REPO_OR_FOLDER, openai-clip:STATE_DICT, or 'synthetic' (default)")
    explain.add_argument("--pretrained", default=None,
                         help="open_clip weight tag (e.g. openai) or a local checkpoint file")
    explain.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    explain.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    explain.add_argument("--method", default="grad_eclip", help="explanation method (see `gradeclip methods`)")
    explain.add_argument("--layers", type=_layers, default=[-1], help="image blocks, comma-separated (default -1)")
    explain.add_argument("--text-layers", type=int, default=8, help="last n text blocks for word importance")
    explain.add_argument("--mode", default="faithful", choices=["faithful", "official"])
    explain.add_argument("--qk", default="raw", choices=["raw", "out_proj"])
    explain.add_argument("--resolution", default="native", choices=["native", "model"])
    explain.add_argument("--out", default="gradeclip_explanation.png",
                         help="output figure (.png, .pdf or .svg); word-importance figures go beside it")
    explain.add_argument("--no-words", action="store_true", help="skip the word-importance figures")

    commands.add_parser("methods", help="list the explanation methods")
    return parser


def _explain(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .explain import explain_image, explain_text
    from .loading import load_model
    from .plotting import save_figure

    model = load_model(args.model, pretrained=args.pretrained, device=args.device, precision=args.precision)
    explanation = explain_image(model, args.image, args.prompts, method=args.method, layers=args.layers,
                                mode=args.mode, qk=args.qk, resolution=args.resolution)
    out = Path(args.out)
    written = save_figure(explanation.plot(), out, formats=[out.suffix.lstrip(".") or "png"])
    for prompt, score in zip(explanation.prompts, explanation.scores[0].tolist()):
        print(f"{score:+.4f}  {prompt}")
    if not args.no_words:
        words = explain_text(model, args.image, args.prompts, layers=args.text_layers, mode=args.mode, qk=args.qk,
                             resolution=args.resolution)
        for k in range(len(args.prompts)):
            pair = words.pair(0, k)
            print("   " + "  ".join(f"{w}:{v:.2f}" for w, v in zip(pair.words, pair.word_importance)))
            target = out.with_name(f"{out.stem}_words{k}{out.suffix or '.png'}")
            written += save_figure(words.plot_text(0, k), target)
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .adapters import UnsupportedModelError
    from .loading import WeightsUnavailableError

    try:
        if args.command == "methods":
            from .methods import list_methods

            for kind, names in list_methods().items():
                print(f"{kind}: {', '.join(names)}")
            return 0
        return _explain(args)
    except (WeightsUnavailableError, UnsupportedModelError, FileNotFoundError, ValueError) as error:
        print(f"gradeclip: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
