"""The ``gradeclip`` command: every command line of the package, parsed here.

    gradeclip explain IMAGE PROMPT [PROMPT ...] --out fig.png      heat maps and word importance of one image
    gradeclip explain-dataset FOLDER --prompts FILE|--classes --out DIR   maps of a whole folder (torchrun too)
    gradeclip evaluate [--dataset ...]                             methods x metrics
    gradeclip notebooks --out OUT                                  the notebooks, executed headless
    gradeclip methods                                              the explanation methods
    gradeclip synthetic train|evaluate                             train or evaluate the synthetic CLIP
    gradeclip critique --out DIR [--doc docs/critique.md]          the critique of Grad-ECLIP measured

The package: this module (parsing, running a command, its errors and warnings as one line), ``commands.py``
(each subcommand's summary, options and description), ``arguments.py`` (the shared argument types and option
groups) and ``__main__.py`` (``python -m gradeclip_utils.cli``). The options that several commands share are
declared once: ``add_model_arguments`` (--model, --pretrained,
--device, --precision) and ``add_explain_arguments`` (--method, --layers, --mode, --qk, --resolution,
--max-patches, --memory-budget, and --score for the commands that pass the score on), their choices taken from the package's
own constants. ``--layers`` is one type everywhere:
comma-separated block indices, negative from the end (``--layers -1,-2``).

``python -m gradeclip_utils.evaluate``, ``.notebooks``, ``.explain_dataset``, ``.synthetic.train``,
``.synthetic.evaluate`` and ``.studies.critique`` are aliases: their ``main`` parses with ``command_parser`` (the subcommand's own
options) and calls the module's ``run_command``, as ``gradeclip`` does. An error the package explains
(``GradEclipError``) and the other errors a user makes (a missing file, a bad value) are printed as one
line, exit status 2, and so are usage errors (an unknown option, a bad value) and output locations that cannot be
written (``OUTPUTS``, checked before any work); warnings are one line too, ``PROG: warning: ...``. Under torchrun:
``torchrun -m gradeclip_utils.cli explain-dataset ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

from .. import __version__
from ..errors import GradEclipError
from ..methods import list_methods
from ..records import writable_output

from .arguments import (NUMBER_LIST, Unset, add_explain_arguments, add_model_arguments, block_indices, key_value)
from .commands import (ALIASES, ARGUMENTS, COMMANDS, MAIN_DESCRIPTION, SYNTHETIC_GROUP, description)

__all__ = ["add_explain_arguments", "add_model_arguments", "block_indices", "build_parser", "command_parser",
           "key_value", "main", "run_guarded", "ALIASES", "COMMANDS", "OUTPUTS", "USER_ERRORS"]



#: what the command reports as one line: errors the package explains, and the built-in ones that a user's input
#: raises (a missing file, a bad value); anything else is a bug and keeps its traceback
USER_ERRORS = (GradEclipError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)


#: the options of each command that name where it writes: a "folder" or a "file"; each is checked writable (its
#: nearest existing folder) before the command loads a model or computes anything
OUTPUTS = {"explain": {"out": "file"}, "explain-dataset": {"out": "folder"},
           "evaluate": {"out": "folder", "doc": "file"}, "notebooks": {"out": "folder"},
           "critique": {"out": "folder", "doc": "file"},
           "synthetic train": {"out": "folder", "export": "folder"},
           "synthetic train-classifier": {"out": "folder", "export": "folder"},
           "synthetic evaluate": {"json": "file", "export": "folder"}}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reads ``-1,-2`` as a value, not as an unknown option, and reports a usage error
    as one line that points to the help.

    argparse takes every argument that starts with ``-`` for an option unless it is one number, so ``--layers
    -1,-2`` would be refused ("expected one argument"); no option of the package's commands looks like that.
    """

    def _parse_optional(self, arg_string: str):
        if NUMBER_LIST.fullmatch(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (the modules' docstrings); options in a wider first column."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``python -m MODULE``, MODULE being ``ALIASES[command]``: the options of ``gradeclip
    COMMAND``, declared by the same function."""
    parser = _Parser(prog=f"python -m {ALIASES[command]}", description=description(command),
                     formatter_class=_Formatter)
    ARGUMENTS[command](parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``gradeclip``, with a subparser per command (``parser.commands`` maps each name to it)."""
    parser = _Parser(prog="gradeclip", formatter_class=_Formatter, description=MAIN_DESCRIPTION,
                     epilog="`gradeclip COMMAND --help` describes each command. The modules' entry points run the "
                            "same\ncommands with the same options:\n  " + "\n  ".join(
                                f"python -m {module:36} = gradeclip {command}" for command, module in ALIASES.items()))
    parser.add_argument("--version", action="version", version=f"gradeclip_utils {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    synthetic = None
    for command, summary in COMMANDS.items():
        where, name = subparsers, command
        if command.startswith(f"{SYNTHETIC_GROUP} "):  # gradeclip synthetic train | evaluate
            if synthetic is None:
                holder = subparsers.add_parser(
                    SYNTHETIC_GROUP, help="the synthetic CLIP (train it, evaluate it) and the synthetic classifier",
                    formatter_class=_Formatter,
                    description="The embedded synthetic CLIP (data/synthetic_clip): train it on generated scenes, "
                                "evaluate it on held-out ones; the embedded synthetic classifier "
                                "(data/synthetic_classifier): train and evaluate it.")
                synthetic = holder.add_subparsers(dest="synthetic_command", required=True, metavar="COMMAND")
            where, name = synthetic, command.split(" ", 1)[1]
        sub = where.add_parser(name, help=summary, description=description(command), formatter_class=_Formatter)
        ARGUMENTS[command](sub)
        parser.commands[command] = sub
    return parser


# ------------------------------------------------------------------------------------- running
def _explain(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from ..explain import check_score, explain_image, explain_text
    from ..loading import load_model
    from ..methods import get_spec
    from ..plotting import save_figure

    if Path(args.image).is_dir():  # checked before the model is loaded, which can take a while
        raise IsADirectoryError(f"{args.image} is a folder: explain takes one image file (explain-dataset explains "
                                "every image of a folder)")
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image file not found: {args.image}")
    prompts = _explained_prompts(args)  # checked before the model is loaded
    model = load_model(args.model, pretrained=args.pretrained, device=args.device, precision=args.precision)
    if args.score is not None:  # given: one the model cannot give is refused (left out: the model's own)
        check_score(model, args.score)
    explanation = explain_image(model, args.image, prompts, method=args.method, layers=args.layers,
                                mode=args.mode, qk=args.qk, resolution=args.resolution, max_patches=args.max_patches,
                                score=args.score, memory_budget=args.memory_budget)
    out = Path(args.out)
    written = save_figure(explanation.plot(), out, formats=[out.suffix.lstrip(".") or "png"])
    for prompt, score in zip(explanation.prompts, explanation.scores[0].tolist()):
        print(f"{score:+.4f}  {prompt}")
    if model.adapter.text is None:  # an image classifier: its prompts are classes, which have no words
        print(f"({explanation.settings.get('score', 'its own score')} of each class; no word importance: a "
              f"{model.family} has no text tower)")
        return _wrote(written)
    # the word importance's method; a score left out is the model's own
    refused = None if args.score is None else get_spec("grad_eclip").unsupported_score(args.score, "text")
    if args.score == "contrast" and not args.no_words:
        print("(no word importance: the contrast has none; explain each prompt's cosine for its words)")
    elif refused is not None and not args.no_words:
        print(f"(no word importance: {refused})")
    elif not args.no_words:
        words = explain_text(model, args.image, args.prompts, layers=args.text_layers, mode=args.mode, qk=args.qk,
                             resolution=args.resolution, max_patches=args.max_patches,
                             score=args.score, memory_budget=args.memory_budget)
        for k in range(len(args.prompts)):
            pair = words.pair(0, k)
            print("   " + "  ".join(f"{w}:{v:.2f}" for w, v in zip(pair.words, pair.word_importance)))
            target = out.with_name(f"{out.stem}_words{k}{out.suffix or '.png'}")
            written += save_figure(words.plot_text(0, k), target)
    return _wrote(written)


def _wrote(written: list) -> int:
    for path in written:
        print(f"wrote {path}")
    return 0


def _explained_prompts(args: argparse.Namespace) -> list[Any]:
    """The prompts ``explain_image`` takes from ``explain``'s arguments: the prompts, or with ``--score contrast``
    the pairs (prompt, its --versus prompt); a ValueError when --versus does not fit the score or the prompts."""
    if args.score != "contrast":
        if args.versus is not None:
            raise ValueError("--versus gives the second prompt of a contrast: use it with --score contrast")
        return list(args.prompts)
    if args.versus is None or len(args.versus) != len(args.prompts):
        raise ValueError(f"--score contrast needs one --versus prompt per prompt ({len(args.prompts)}), in the same "
                         'order: e.g. "a red circle" --score contrast --versus "a blue circle"; got '
                         f"{0 if args.versus is None else len(args.versus)}")
    return list(zip(args.prompts, args.versus))


def _given_score(args: argparse.Namespace) -> None:
    """``--score`` left out becomes None (the model's own default score, which only the loaded model tells);
    one given that the model ``--model`` names cannot give is refused before it is loaded, where its name
    tells that it is an image classifier (``loading.named_classifier``)."""
    from ..adapters import UnsupportedMethodError
    from ..loading import named_classifier
    from ..adapters.classifier import class_score_refusal

    if isinstance(args.score, Unset):
        args.score = None
        return
    family = named_classifier(args.model) if getattr(args, "model", None) else None
    reason = None if family is None else class_score_refusal(args.score, family)
    if reason is not None:
        raise UnsupportedMethodError(reason)


def _methods() -> int:
    for kind, names in list_methods().items():
        print(f"{kind}: {', '.join(names)}")
    return 0


def _check_outputs(command: str, args: argparse.Namespace) -> None:
    """Refuse, before a model is loaded or anything computed, an output location of ``command`` that cannot be
    written (``OUTPUTS``, ``records.writable_output``)."""
    for option, kind in OUTPUTS.get(command, {}).items():
        value = getattr(args, option, None)
        if value is not None:
            writable_output(value, folder=kind == "folder")


def _run(command: str, parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> Any:
    """Run ``command`` on its parsed ``args`` (``parser``: its parser, for its errors; ``argv``: its own arguments),
    once its output locations are known to be writable."""
    _check_outputs(command, args)
    if hasattr(args, "score"):
        _given_score(args)
    if command == "explain":
        return _explain(args)
    if command == "methods":
        return _methods()
    if command == "explain-dataset":
        from ..explain_dataset import run_command

        return run_command(args)
    if command == "evaluate":
        from ..evaluate import run_command  # the module `python -m` runs (ALIASES)

        return run_command(parser, args, argv)
    if command == "notebooks":
        from ..notebooks import run_command

        return run_command(parser, args)
    if command == "critique":
        from ..studies.critique import run_command

        return run_command(parser, args, argv)
    if command == "synthetic train":
        from ..synthetic.train import run_command

        return run_command(parser, args)
    if command == "synthetic train-classifier":
        from ..synthetic.train_classifier import run_command

        return run_command(parser, args)
    from ..synthetic.evaluate import run_command

    return run_command(parser, args)


def alias_main(command: str, argv: Sequence[str] | None = None) -> Any:
    """``python -m MODULE`` (MODULE: ``ALIASES[command]``): ``argv`` (default: the process's arguments) parsed by
    the command's own parser and run; returns what the command returns (the evaluation: its summary)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = command_parser(command)
    return _run(command, parser, parser.parse_args(argv), argv)


def alias(command: str) -> int:
    """What ``python -m MODULE`` runs: ``alias_main`` with the errors a user can fix as one line; the exit status.
    The modules' ``__main__`` blocks call it, so that no module below this one imports it."""
    return run_guarded(lambda: alias_main(command), f"python -m {ALIASES[command]}")


@contextmanager
def _one_line_warnings(prog: str) -> Iterator[None]:
    """Warnings printed as ``PROG: warning: MESSAGE``, each message once: the line Python would show with them is
    the command's own entry point (``sys.exit(main())``), which tells a user of the command nothing, and the same
    message from two calls (the maps', then the words' downscaling of one image) says nothing new."""
    original, seen = warnings.formatwarning, set()

    def one_line(message, category, filename, lineno, line=None) -> str:
        text = f"{prog}: warning: {message}\n"
        if text in seen:
            return ""
        seen.add(text)
        return text

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = original


def run_guarded(run: Callable[[], Any], prog: str) -> int:
    """``run()``, with the errors a user can fix (``USER_ERRORS``) printed as one line ``PROG: error: ...``
    (exit status 2); a command that returns no status (a summary, a path) has succeeded (0). Under torchrun the
    error is raised on: torchrun's ``record`` writes it to the failure report, which names the failing rank."""
    try:
        with _one_line_warnings(prog):
            result = run()
    except USER_ERRORS as error:
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``gradeclip ...``: parse ``argv`` (default: the process's arguments) and run the command; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command if args.command != SYNTHETIC_GROUP else f"{SYNTHETIC_GROUP} {args.synthetic_command}"
    words = command.split()
    start = argv.index(words[0]) + len(words)  # the command's own arguments, as its python -m alias takes them
    sub = parser.commands[command]
    return run_guarded(lambda: _run(command, sub, args, argv[start:]), sub.prog)
