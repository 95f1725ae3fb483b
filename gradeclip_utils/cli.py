"""The ``gradeclip`` command: every command line of the package, parsed here.

    gradeclip explain IMAGE PROMPT [PROMPT ...] --out fig.png      heat maps and word importance of one image
    gradeclip explain-dataset FOLDER --prompts FILE|--classes --out DIR   maps of a whole folder (torchrun too)
    gradeclip evaluate [--dataset ...]                             methods x metrics
    gradeclip notebooks --out OUT                                  the notebooks, executed headless
    gradeclip methods                                              the explanation methods
    gradeclip synthetic train|evaluate                             train or evaluate the synthetic CLIP
    gradeclip critique --out DIR [--doc docs/critique.md]          the critique of Grad-ECLIP measured

The options that several commands share are declared once: ``add_model_arguments`` (--model, --pretrained,
--device, --precision) and ``add_explain_arguments`` (--method, --layers, --mode, --qk, --resolution,
--max-patches, --memory-budget, and --score for the commands that pass the score on), their choices taken from the
package's own constants. ``--layers`` is one type everywhere:
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
import ast
import importlib
import json
import os
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

from . import __version__
from .adapters import MODES
from .budget import parse_bytes
from .errors import GradEclipError
from .inputs import DEFAULT_MAX_PATCHES, RESOLUTIONS
from .jobs.distributed import DEFAULT_TIMEOUT_MINUTES
from .loading import PRECISION_DTYPES, SYNTHETIC
from .methods import QK_CHOICES, list_methods
from .methods.scores import DEFAULT_SCORE, SCORES
from .records import writable_output

__all__ = ["add_explain_arguments", "add_model_arguments", "block_indices", "build_parser", "command_parser",
           "key_value", "main", "run_guarded", "ALIASES", "COMMANDS", "OUTPUTS", "USER_ERRORS"]

#: the subcommands, with their one-line summaries (``synthetic train`` is ``gradeclip synthetic train``)
COMMANDS = {
    "explain": "heat maps of an image against prompts, and the words' importance, as figures",
    "explain-dataset": "maps of every image of a folder into sharded safetensors files (one process, or many under "
                       "torchrun)",
    "evaluate": "compare explanation methods on localisation, faithfulness, the sanity check and speed",
    "notebooks": "execute the notebooks headless and collect the executed copies and their figures",
    "methods": "list the explanation methods",
    "synthetic train": "train the synthetic CLIP on generated scenes",
    "synthetic evaluate": "evaluate a CLIP on held-out synthetic scenes, or pick the best snapshot of a training run",
    "critique": "measure the critique of Grad-ECLIP (Cui and Fan 2026): the attention-gradient equivalence, official "
                "mode's score shift, faithfulness, sensitivity-n, the sanity check",
}
SYNTHETIC_GROUP = "synthetic"
#: the modules whose ``python -m`` runs a subcommand (their docstrings are the subcommands' descriptions)
ALIASES = {"explain-dataset": "gradeclip_utils.explain_dataset", "evaluate": "gradeclip_utils.evaluate",
           "notebooks": "gradeclip_utils.notebooks", "synthetic train": "gradeclip_utils.synthetic.train",
           "synthetic evaluate": "gradeclip_utils.synthetic.evaluate", "critique": "gradeclip_utils.studies.critique"}
#: what the command reports as one line: errors the package explains, and the built-in ones that a user's input
#: raises (a missing file, a bad value); anything else is a bug and keeps its traceback
USER_ERRORS = (GradEclipError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)
#: the options of each command that name where it writes: a "folder" or a "file"; each is checked writable (its
#: nearest existing folder) before the command loads a model or computes anything
OUTPUTS = {"explain": {"out": "file"}, "explain-dataset": {"out": "folder"},
           "evaluate": {"out": "folder", "doc": "file"}, "notebooks": {"out": "folder"},
           "critique": {"out": "folder", "doc": "file"},
           "synthetic train": {"out": "folder", "export": "folder"},
           "synthetic evaluate": {"json": "file", "export": "folder"}}
#: the zero-shot prompt templates of a class (open_clip's zero_shot_metadata): OpenAI's 80 or the simple ones
TEMPLATES = ("openai", "simple")
#: a value that starts like an option but is a list of numbers, such as ``-1,-2`` (see _Parser)
_NUMBER_LIST = re.compile(r"-\d+(\s*,\s*-?\d+)*,?")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reads ``-1,-2`` as a value, not as an unknown option, and reports a usage error
    as one line that points to the help.

    argparse takes every argument that starts with ``-`` for an option unless it is one number, so ``--layers
    -1,-2`` would be refused ("expected one argument"); no option of the package's commands looks like that.
    """

    def _parse_optional(self, arg_string: str):
        if _NUMBER_LIST.fullmatch(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (the modules' docstrings); options in a wider first column."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)


# ---------------------------------------------------------------------------------- value types
def block_indices(text: str) -> list[int]:
    """``"-1,-2"`` -> ``[-1, -2]``: the type of ``--layers`` (comma-separated block indices, negative from the end)."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices such as -1 or -1,-2, got {text!r}")
    return layers


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_memory_budget(parser) -> None:
    parser.add_argument("--memory-budget", type=_bytes, default=None, metavar="SIZE",
                        help="bytes the work of one call may hold, e.g. 2G or 512M: batches are cut into chunks that "
                             "fit it (default: half the memory free on the device, at most 1 GiB)")


def key_value(parse: Callable[[str], Any]) -> Callable[[str], tuple[str, Any]]:
    """The type of a repeatable ``KEY=VALUE`` option: ``"a=1"`` -> ``("a", parse("1"))``."""

    def convert(text: str) -> tuple[str, Any]:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
        try:
            return key.strip(), parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None

    return convert


def _python_literal(text: str) -> Any:
    """A notebook parameter's value: a Python literal (50, 0.5, True, None, [1, 2]), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class _FlattenLists(argparse.Action):
    """``--layers -2 -1`` and ``--layers -2,-1`` alike (an option with ``nargs="+"`` of ``block_indices``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [index for group in values for index in group])


# ------------------------------------------------------------------------------- shared options
def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = SYNTHETIC, pretrained: bool = True,
                        device: bool = True, precision: bool = True, unset: str | None = None,
                        description: str = "the CLIP to explain, as gradeclip_utils.load_model loads it") -> None:
    """``--model`` (default ``default``), ``--pretrained``, ``--device`` and ``--precision``, as ``load_model``
    takes them, in an option group "model" with ``description``. ``unset``: what an option left out means where it
    is not load_model's default (the notebooks: each notebook's own parameter); ``pretrained``, ``device``,
    ``precision``: False leaves that option out."""
    group = parser.add_argument_group("model", description)
    group.add_argument(
        "--model", default=default, metavar="NAME",
        help="an open_clip model name (ViT-B-16, RN50), a folder with open_clip_config.json and weights, "
             "hf:REPO_OR_FOLDER (a Hugging Face CLIPModel), openai-clip:NAME_OR_FILE (OpenAI's clip package), or "
             f"'synthetic', the embedded model that works offline (default: {unset or default})")
    if pretrained:
        no_weights = "none, which gives random weights for a model name; a folder, hf: or synthetic brings its own"
        group.add_argument(
            "--pretrained", default=None, metavar="TAG_OR_FILE",
            help="the weights of an open_clip model name: a tag such as openai or laion2b_s34b_b88k (downloaded on "
                 "first use, then cached) or a local checkpoint file, e.g. --model ViT-B-16 --pretrained openai "
                 f"(default: {unset or no_weights})")
    if device:
        any_device = "cuda when available, else cpu; under torchrun each process its cuda:LOCAL_RANK"
        group.add_argument("--device", default=None, help=f"cpu, cuda or cuda:N (default: {unset or any_device})")
    if precision:
        group.add_argument(
            "--precision", default="fp32", choices=tuple(PRECISION_DTYPES),
            help="the number format of the weights: fp32 (default), bf16 (half the memory, CPU or GPU) or fp16 "
                 "(GPU only)")


def add_explain_arguments(parser: argparse.ArgumentParser, *, score: bool = False,
                          pairs: str = "its --versus prompt, e.g. \"a red circle\" --score contrast --versus "
                                       "\"a blue circle\"") -> None:
    """``--method``, ``--layers``, ``--mode``, ``--qk``, ``--resolution`` and ``--max-patches``, and with
    ``score`` ``--score``, as ``explain_image`` takes them, in an option group "explanation". (``score`` is
    for the commands that pass the score on: an option that a command would ignore is not offered.)
    ``pairs``: how the command takes the second prompt of a contrast, in ``--score``'s help."""
    methods = list_methods()["image"]
    group = parser.add_argument_group("explanation", "how the heat maps are computed (see explain_image)")
    group.add_argument(
        "--method", default="grad_eclip", choices=methods, metavar="NAME",
        help=f"the explanation method: {', '.join(methods)} (`gradeclip methods` lists them; a method the model's "
             "family cannot run is refused by name; default: grad_eclip)")
    _add_layers(group, "image blocks to explain, comma-separated, negative from the end: -1 is the last block; "
                       "several blocks are summed after a ReLU per block, e.g. --layers -1,-2 (default: -1)")
    group.add_argument(
        "--mode", default="faithful", choices=MODES,
        help="faithful: the model's own blocks, so the scores are the model's cosines (default); official: the "
             "explained block recomputed with one head, as the Grad-ECLIP authors' evaluation code does (its "
             "scores differ from the model's)")
    group.add_argument(
        "--qk", default="raw", choices=QK_CHOICES,
        help="the queries and keys of Grad-ECLIP's spatial weight cos(q_cls, k_i): raw, the attention's own "
             "(default; the authors' notebooks), or out_proj, passed through the block's output projection first "
             "(the authors' evaluation scripts)")
    group.add_argument(
        "--resolution", default="native", choices=RESOLUTIONS,
        help="native: the image's own aspect ratio, each side rounded to the patch size, positional embeddings "
             "interpolated (default); model: the model's preprocessing (resize and centre crop, e.g. 224 x 224)")
    group.add_argument(
        "--max-patches", type=_positive_int, default=DEFAULT_MAX_PATCHES, metavar="N",
        help="native resolution: an image that would have more patches is downscaled to fit, with a warning "
             f"(default: {DEFAULT_MAX_PATCHES}, 640 x 640 pixels at patch size 16); e.g. --max-patches 4096 "
             "explains a 1024 x 1024 picture at its size")
    _add_memory_budget(group)
    if score:
        group.add_argument(
            "--score", default=DEFAULT_SCORE, choices=SCORES,
            help="what the maps explain: cosine, the image-text cosine (default); logit, the model's logit scale x "
                 "the cosine; probability, each prompt's softmax among the prompts given (the zero-shot class "
                 "probability; two prompts or more), e.g. --score probability; contrast, the cosine of a prompt "
                 f"minus that of {pairs}. Methods without a gradient of the score (raw_attention, rollout, "
                 "maskclip, clip_surgery, itsm) take only the cosine")


def _add_layers(parser, help: str, *, several: bool = False) -> None:
    """``--layers`` of type ``block_indices``; ``several``: space-separated lists too (``--layers -2 -1``), for
    commands without positional arguments (where they would be taken for more layers)."""
    if several:
        parser.add_argument("--layers", type=block_indices, nargs="+", action=_FlattenLists, default=[-1],
                            metavar="INDICES", help=help)
    else:
        parser.add_argument("--layers", type=block_indices, default=[-1], metavar="INDICES", help=help)


def _add_templates(parser, help: str) -> None:
    parser.add_argument("--templates", choices=TEMPLATES, default="openai",
                        help=f"{help}: OpenAI's 80 prompt templates (default) or the simple ones, e.g. "
                             "'a photo of a {}.'; each class's embedding is the mean over its templates")


def _add_run_folder(parser, what: str) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of torch (default: torch's own choice, about one per core)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"discard a previous run in --out (by default {what} with the same settings resumes, "
                             "and other settings are an error)")
    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_MINUTES, metavar="MINUTES",
                        help="under torchrun: minutes a process waits for the others (default %(default)g)")


# ---------------------------------------------------------------------------------- subcommands
def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image file (PNG, JPEG, ...)")
    parser.add_argument("prompts", nargs="+", help="one or more text prompts, quoted where they have spaces")
    add_model_arguments(parser)
    add_explain_arguments(parser, score=True)
    parser.add_argument("--versus", nargs="+", default=None, metavar="PROMPT",
                        help="with --score contrast: the prompt each prompt is contrasted with, one per prompt and "
                             "in the same order: scene.png \"a red circle\" \"a dog\" --score contrast --versus "
                             "\"a blue circle\" \"a cat\" maps what makes the picture a red circle rather than a "
                             "blue one, and a dog rather than a cat")
    parser.add_argument("--text-layers", type=_positive_int, default=8, metavar="N",
                        help="word importance: the last N text blocks, summed (default: 8, as the authors)")
    parser.add_argument("--out", default="gradeclip_explanation.png",
                        help="the figure of the heat maps (.png, .pdf or .svg); the word-importance figures go "
                             "beside it as NAME_words0.png, ... (default: %(default)s)")
    parser.add_argument("--no-words", action="store_true", help="skip word importance (its figures and lines)")


def _explain_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from .maps_store import ALL, OWN

    parser.add_argument("folder", help="a folder of images (searched recursively) or an ImageNet-style tree of "
                                       "class folders")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompts", metavar="FILE",
                       help="a text file with one prompt per line: every image against every prompt (--score "
                            "contrast: one pair per line, the two prompts separated by '|', e.g. a red circle | a "
                            "blue circle)")
    which.add_argument("--classes", nargs="?", const=OWN, choices=(OWN, ALL),
                       help="the first-level folders are classes: each image against its own class (--classes, "
                            "or --classes own) or against every class (--classes all)")
    parser.add_argument("--out", required=True, help="the output folder (index.json, targets and shards)")
    _add_templates(parser, "with --classes")
    add_model_arguments(parser)
    add_explain_arguments(parser, score=True, pairs="the other of its pair, a line \"a red circle | a blue circle\" "
                                                    "of the --prompts file (not with --classes)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                        help="images per forward and backward pass, taken from images of one patch grid "
                             "(default: 8); lower it when memory runs out")
    parser.add_argument("--shard-size", type=_positive_int, default=256, metavar="N",
                        help="images per shard file, the unit of work of the processes (default: 256)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="DataLoader worker processes that decode the images (default: 4 on CUDA, 0 on the CPU)")
    _add_run_folder(parser, "a folder")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation import DATASETS, DEFAULT_METHODS, EVAL_SCORES, PROTOCOLS

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="synthetic",
                      help="synthetic: held-out scenes of the synthetic world, with exact masks (default); imagenet: "
                           "a folder of class subfolders; folder: a CSV of image,prompt[,mask] rows")
    data.add_argument("--data", default=None, metavar="PATH",
                      help="imagenet: the folder of class subfolders; folder: the CSV (not used by synthetic)")
    data.add_argument("-n", "--n", type=_positive_int, default=200, metavar="N",
                      help="number of images (default: 200)")
    _add_templates(data, "imagenet")
    data.add_argument("--target", choices=("gt", "pred"), default="gt",
                      help="imagenet: explain the ground-truth class (default) or the predicted one (the curves "
                           "always score the ground truth)")
    add_model_arguments(parser)
    run = parser.add_argument_group("methods and metrics")
    run.add_argument("--methods", default=None, metavar="NAMES",
                     help="comma-separated methods to compare, e.g. --methods grad_eclip,rise,random (default: all "
                          f"that the model's family can run of {', '.join(DEFAULT_METHODS)})")
    run.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                     help="images explained together (default: 16); a batch is also the unit of work of the "
                          "processes under torchrun, so the results do not depend on their number")
    run.add_argument("--score", choices=EVAL_SCORES, default=DEFAULT_SCORE,
                     help="what the maps explain (and the curves score too): cosine (default), logit or probability, "
                          "each image's class's among every class; methods that cannot explain it are left out and "
                          "named (no contrast: it needs a second class per image)")
    run.add_argument("--protocol", choices=PROTOCOLS, default="project",
                     help="deletion and insertion as this project runs them (default: project) or exactly as the "
                          "Grad-ECLIP authors' scripts do (authors)")
    run.add_argument("--tolerance", type=float, default=4.0, metavar="PIXELS",
                     help="pointing-game tolerance in pixels of the model's input (default: 4, the usual 15 px at 224 "
                          "scaled to the synthetic 64)")
    run.add_argument("--tie-seeds", type=_positive_int, default=3, metavar="N",
                     help="project protocol: seeds of the order of tied pixels over which deletion and insertion are "
                          "repeated, to report how much that order moves each AUC (default: 3)")
    run.add_argument("--no-faithfulness", action="store_true", help="skip deletion and insertion")
    run.add_argument("--rise-masks", type=_positive_int, default=2000, metavar="N",
                     help="RISE: random masks per image (default: 2000); its time grows with them, its noise shrinks")
    run.add_argument("--rise-plain", action="store_true",
                     help="RISE's plain weighted sum of the masks (default: the mean score subtracted first, which "
                          "removes the masks' coverage noise)")
    run.add_argument("--m2ib-steps", type=_positive_int, default=10, metavar="N",
                     help="M2IB: optimisation steps of each map (default: 10)")
    run.add_argument("--m2ib-samples", type=_positive_int, default=10, metavar="N",
                     help="M2IB: noise samples per step (default: 10)")
    run.add_argument("--sanity-images", type=int, default=8, metavar="N",
                     help="images of the cascading randomisation sanity check (default: 8; 0 skips it)")
    run.add_argument("--sanity-methods", default=None, metavar="NAMES",
                     help="comma-separated methods of the sanity check (default: all but random)")
    run.add_argument("--timing-images", type=int, default=4, metavar="N",
                     help="images of the speed measurement (default: 4; 0 skips it)")
    run.add_argument("--timing-repeats", type=_positive_int, default=5, metavar="N",
                     help="timed runs per method in the speed measurement, after a warm-up (default: 5)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the random baseline, RISE's masks, M2IB's noise, the order of tied pixels and the "
                          "sanity check's randomisation (default: 0)")
    _add_memory_budget(run)
    out = parser.add_argument_group("run")
    out.add_argument("--out", default=None, metavar="FOLDER",
                     help="output folder (default: outputs/eval-DATASET)")
    out.add_argument("--doc", default=None, metavar="FILE",
                     help="also write the summary with its plots as this markdown file (the plots go into a "
                          "folder named after it), e.g. --doc docs/results.md")
    out.add_argument("--workers", type=int, default=None, metavar="N",
                     help="DataLoader worker processes that load the images (default: 4 on CUDA, 0 on the CPU, "
                          "where they would compete with the model for cores)")
    _add_run_folder(out, "a run")


def _notebooks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FOLDER",
                        help="output folder: OUT/notebooks (the executed copies), OUT/figures, OUT/summary.json "
                             "(required to run)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="only the notebooks whose name starts so, e.g. --only 01 06 (default: all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small study sizes (QUICK=True), as in the tests")
    size.add_argument("--full", action="store_true", help="the full study sizes (FULL=True); the default is a "
                      "smaller run that still shows what each study shows")
    add_model_arguments(parser, default=None, precision=False, unset="each notebook's own",
                        description="MODEL, PRETRAINED and DEVICE of every notebook")
    parser.add_argument("--param", action="append", type=key_value(_python_literal), default=[], metavar="NAME=VALUE",
                        help="set any other parameter of the notebooks, its value a Python literal or else text, "
                             "e.g. --param N_SCENES=50 (repeatable; a name no selected notebook has is refused)")
    parser.add_argument("--timeout", type=int, default=1800, metavar="SECONDS",
                        help="seconds allowed per cell (default: 1800)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    parser.add_argument("--list", action="store_true", help="list the notebooks and exit")
    parser.add_argument("--install-lab-settings", action="store_true",
                        help="make JupyterLab in this environment save widget state with notebooks, and exit")


def _synthetic_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .synthetic.dataset import TRAIN_MIX

    parser.add_argument("--out", required=True, help="the run folder (checkpoint, log, snapshots, exported model)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default: 3000)")
    parser.add_argument("--batch-size", type=_positive_int, default=128, metavar="N",
                        help="scenes per step, each with its caption (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW (default: 0.001)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's weight decay (default: 0.1)")
    parser.add_argument("--warmup", type=int, default=100, metavar="STEPS",
                        help="steps of linear warm-up before the cosine decay (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation (default: 0)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads of torch (default: 2)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="data-generation processes (default: 1; 0: in the training loop)")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0, metavar="MINUTES",
                        help="minutes between checkpoints to OUT/checkpoint.pt (default: 3)")
    parser.add_argument("--eval-every", type=int, default=100, metavar="STEPS",
                        help="steps between zero-shot monitors (default: 100; 0: off)")
    parser.add_argument("--negatives", type=int, default=2, metavar="N",
                        help="hard negative captions per scene in the loss (default: 2)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--export", default=None, metavar="FOLDER",
                        help="also export the final model here, e.g. --export data/synthetic_clip (default: only "
                             "OUT/model)")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="MINUTES",
                        help="stop (with a checkpoint) after this long (default: no limit)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (with a checkpoint) after this step; --resume continues, possibly with a new "
                             "--steps (default: at --steps)")
    parser.add_argument("--vision", action="append", type=key_value(json.loads), default=[], metavar="KEY=VALUE",
                        help="override one entry of the image tower's open_clip vision_cfg (VALUE is JSON), e.g. "
                             "--vision layers=3 or --vision ls_init_value=0.1; repeatable")
    parser.add_argument("--mix", action="append", type=key_value(float), default=[], metavar="KIND=P",
                        help=f"override the share of one training example kind ({', '.join(TRAIN_MIX)}); "
                             "repeatable; shares are renormalised")
    parser.add_argument("--snapshot-every", type=int, default=250, metavar="STEPS",
                        help="also export the model every N steps to OUT/snapshots/step_N (default: 250; 0: off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and batch jobs)")


def _synthetic_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, pretrained=False, device=False, precision=False)
    parser.add_argument("--n-zero-shot", type=_positive_int, default=700, metavar="N",
                        help="single-object scenes of the zero-shot colour x shape test (default: 700)")
    parser.add_argument("--n-choice", type=_positive_int, default=200, metavar="N",
                        help="scenes per caption-choice kind (default: 200)")
    parser.add_argument("--n-localisation", type=_positive_int, default=300, metavar="N",
                        help="scenes of the Grad-ECLIP localisation (default: 300)")
    parser.add_argument("--tolerance", type=float, default=4.0, metavar="PIXELS",
                        help="pointing-game tolerance in pixels of the 64 x 64 mask (default: 4)")
    _add_layers(parser, "blocks Grad-ECLIP explains for the localisation rows, negative from the end, e.g. "
                        "--layers -2,-1 or --layers -2 -1 (default: the last, -1)", several=True)
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads of torch (default: 2)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    parser.add_argument("--select", default=None, metavar="DIR",
                        help="instead: pick the best snapshot in DIR (a run's snapshots/) on the validation range")
    parser.add_argument("--min-zero-shot", type=float, default=0.95, metavar="SHARE",
                        help="with --select: the zero-shot accuracy a snapshot must reach (default: 0.95)")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="with --select: copy the selected model's config and weights to DIR, e.g. "
                             "--export data/synthetic_clip")


def _critique_arguments(parser: argparse.ArgumentParser) -> None:
    from .studies.critique import ALL_PARTS, DEFAULT_RANDOM_MODEL, RANDOM_WEIGHT_PARTS, RANDOM_ZERO_SHOT

    add_model_arguments(parser, precision=False,
                        description="the CLIP of the whole study (random weights: only what they can show)")
    data = parser.add_argument_group("data and sizes")
    data.add_argument("--imagenet", default=None, metavar="FOLDER",
                      help="a folder of class subfolders (ImageNet-style) for the score shift and the faithfulness "
                           "items, instead of held-out synthetic scenes (default: synthetic scenes)")
    data.add_argument("--parts", nargs="+", choices=ALL_PARTS, default=None, metavar="PART",
                      help=f"the parts to run, of {', '.join(ALL_PARTS)} (default: all for trained weights and the "
                           f"embedded model, {', '.join(RANDOM_WEIGHT_PARTS)} for random weights)")
    data.add_argument("--quick", action="store_true", help="small sizes (what the tests run)")
    data.add_argument("--images", type=_positive_int, default=None, metavar="N",
                      help="items of the faithfulness, sensitivity-n and sanity parts (default: 24; --quick: 6)")
    data.add_argument("--zero-shot", type=_positive_int, default=None, metavar="N",
                      help="held-out single-object scenes of the score shift and zero-shot accuracy (default: 140; "
                           "--quick: 24)")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the subsets, the random baseline, the order of tied pixels, the randomisation and "
                           "the random-weight model's weights (default: 0)")
    random = parser.add_argument_group("random weights", "a second run on a model with random weights, only the "
                                       f"parts {', '.join(RANDOM_WEIGHT_PARTS)}")
    random.add_argument("--random-model", default=DEFAULT_RANDOM_MODEL, metavar="NAME",
                        help="the open_clip model name built with random weights (pretrained=None, offline) at its "
                             "own resolution, or 'none' to skip this run (default: %(default)s)")
    random.add_argument("--random-zero-shot", type=_positive_int, default=RANDOM_ZERO_SHOT, metavar="N",
                        help="held-out scenes of its score shift, each against the 35 class prompts "
                             "(default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="FOLDER", help="the folder of results.json")
    out.add_argument("--doc", default=None, metavar="FILE",
                     help="also write the markdown page here, e.g. --doc docs/critique.md (default: only printed)")


_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "explain": _explain_arguments, "explain-dataset": _explain_dataset_arguments, "evaluate": _evaluate_arguments,
    "notebooks": _notebooks_arguments, "methods": lambda parser: None,
    "synthetic train": _synthetic_train_arguments, "synthetic evaluate": _synthetic_evaluate_arguments,
    "critique": _critique_arguments,
}


MAIN_DESCRIPTION = """Grad-ECLIP explanations for CLIP models: one command, with a subcommand per task.

    gradeclip explain data/samples/three_shapes.png "a red circle" "a blue square" --out figures/shapes.png
    gradeclip explain photo.jpg "a dog" "a cat" --model ViT-B-16 --pretrained openai --out figures/dog.png

The model is the embedded synthetic CLIP unless --model names another: it knows only coloured shapes on grey
(data/samples), works offline and warns on photographs; --model ViT-B-16 --pretrained openai is the paper's CLIP.
"""

EXPLAIN_DESCRIPTION = """Heat maps of one image against one or more prompts (one panel per prompt), and the
importance of each prompt's words for its match with the image.

    gradeclip explain photo.jpg "a dog" "a cat" --out fig.png                 # the embedded synthetic model
    gradeclip explain photo.jpg "a dog" --model ViT-B-16 --pretrained openai --layers -1,-2
    gradeclip explain photo.jpg "a dog" --model hf:/path/to/clip-vit-base-patch16 --method rise
    gradeclip explain photo.jpg "a dog" "a cat" "a bird" --score probability   # the zero-shot probability
    gradeclip explain scene.png "a red circle" --score contrast --versus "a blue circle"

Prints each prompt's score (the image-text cosine, or the --score explained) and its words' importance;
writes the figure of the maps to --out and one word-importance figure per prompt beside it (not for the
contrast, which has no word importance).
"""


def _description(command: str) -> str:
    if command == "explain":
        return EXPLAIN_DESCRIPTION
    if command in ALIASES:
        return importlib.import_module(ALIASES[command]).__doc__
    return COMMANDS[command][0].upper() + COMMANDS[command][1:] + "."


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``python -m MODULE``, MODULE being ``ALIASES[command]``: the options of ``gradeclip
    COMMAND``, declared by the same function."""
    parser = _Parser(prog=f"python -m {ALIASES[command]}", description=_description(command),
                     formatter_class=_Formatter)
    _ARGUMENTS[command](parser)
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
                    SYNTHETIC_GROUP, help="the synthetic CLIP: train it, evaluate it", formatter_class=_Formatter,
                    description="The embedded synthetic CLIP (data/synthetic_clip): train it on generated scenes, "
                                "evaluate it on held-out ones.")
                synthetic = holder.add_subparsers(dest="synthetic_command", required=True, metavar="COMMAND")
            where, name = synthetic, command.split(" ", 1)[1]
        sub = where.add_parser(name, help=summary, description=_description(command), formatter_class=_Formatter)
        _ARGUMENTS[command](sub)
        parser.commands[command] = sub
    return parser


# ------------------------------------------------------------------------------------- running
def _explain(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .explain import explain_image, explain_text
    from .loading import load_model
    from .plotting import save_figure

    if Path(args.image).is_dir():  # checked before the model is loaded, which can take a while
        raise IsADirectoryError(f"{args.image} is a folder: explain takes one image file (explain-dataset explains "
                                "every image of a folder)")
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image file not found: {args.image}")
    prompts = _explained_prompts(args)  # checked before the model is loaded
    model = load_model(args.model, pretrained=args.pretrained, device=args.device, precision=args.precision)
    explanation = explain_image(model, args.image, prompts, method=args.method, layers=args.layers,
                                mode=args.mode, qk=args.qk, resolution=args.resolution, max_patches=args.max_patches,
                                score=args.score, memory_budget=args.memory_budget)
    out = Path(args.out)
    written = save_figure(explanation.plot(), out, formats=[out.suffix.lstrip(".") or "png"])
    for prompt, score in zip(explanation.prompts, explanation.scores[0].tolist()):
        print(f"{score:+.4f}  {prompt}")
    if args.score == "contrast" and not args.no_words:
        print("(no word importance: the contrast has none; explain each prompt's cosine for its words)")
    elif not args.no_words:
        words = explain_text(model, args.image, args.prompts, layers=args.text_layers, mode=args.mode, qk=args.qk,
                             resolution=args.resolution, max_patches=args.max_patches, score=args.score,
                             memory_budget=args.memory_budget)
        for k in range(len(args.prompts)):
            pair = words.pair(0, k)
            print("   " + "  ".join(f"{w}:{v:.2f}" for w, v in zip(pair.words, pair.word_importance)))
            target = out.with_name(f"{out.stem}_words{k}{out.suffix or '.png'}")
            written += save_figure(words.plot_text(0, k), target)
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
    if command == "explain":
        return _explain(args)
    if command == "methods":
        return _methods()
    if command == "explain-dataset":
        from .explain_dataset import run_command

        return run_command(args)
    if command == "evaluate":
        from .evaluate import run_command  # the module `python -m` runs (ALIASES)

        return run_command(parser, args, argv)
    if command == "notebooks":
        from .notebooks import run_command

        return run_command(parser, args)
    if command == "critique":
        from .studies.critique import run_command

        return run_command(parser, args, argv)
    if command == "synthetic train":
        from .synthetic.train import run_command

        return run_command(parser, args)
    from .synthetic.evaluate import run_command

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


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
