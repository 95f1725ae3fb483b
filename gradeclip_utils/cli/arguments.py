"""The command line's shared argument types and option groups: block indices, key=value options, byte sizes,
the model options (``add_model_arguments``) and the explanation options (``add_explain_arguments``), each
declared once with its choices taken from the package's own constants."""

from __future__ import annotations

import argparse
import ast
import re
from typing import Any, Callable

from ..adapters import MODES
from ..budget import parse_bytes
from ..inputs import DEFAULT_MAX_PATCHES, RESOLUTIONS
from ..jobs.distributed import DEFAULT_TIMEOUT_MINUTES
from ..loading import PRECISION_DTYPES, SYNTHETIC
from ..methods import QK_CHOICES, list_methods
from ..methods.scores import DEFAULT_SCORE, KNOWN_SCORES


#: the zero-shot prompt templates of a class (open_clip's zero_shot_metadata): OpenAI's 80 or the simple ones
TEMPLATES = ("openai", "simple")


class Unset(str):
    """An option's default value, told apart from the same value given on the command line: ``--score`` left
    out is the model's own default score (a classifier's logit), ``--score cosine`` given is the cosine, which a
    classifier refuses."""


#: ``--score``'s default: the cosine, standing for the model's own default score
UNSET_SCORE = Unset(DEFAULT_SCORE)


#: a value that starts like an option but is a list of numbers, such as ``-1,-2`` (see _Parser)
NUMBER_LIST = re.compile(r"-\d+(\s*,\s*-?\d+)*,?")


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def byte_size(text: str) -> int:
    """The type of ``--memory-budget``: bytes, with a suffix (``2G``, ``512M``; ``budget.parse_bytes``)."""
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_memory_budget(parser) -> None:
    parser.add_argument("--memory-budget", type=byte_size, default=None, metavar="SIZE",
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


def python_literal(text: str) -> Any:
    """A notebook parameter's value: a Python literal (50, 0.5, True, None, [1, 2]), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class FlattenLists(argparse.Action):
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
    add_layers(group, "image blocks to explain, comma-separated, negative from the end: -1 is the last block; "
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
        "--max-patches", type=positive_int, default=DEFAULT_MAX_PATCHES, metavar="N",
        help="native resolution: an image that would have more patches is downscaled to fit, with a warning "
             f"(default: {DEFAULT_MAX_PATCHES}, 640 x 640 pixels at patch size 16); e.g. --max-patches 4096 "
             "explains a 1024 x 1024 picture at its size")
    add_memory_budget(group)
    if score:
        group.add_argument(
            "--score", default=UNSET_SCORE, choices=KNOWN_SCORES,
            help="what the maps explain: cosine, the image-text cosine (default); logit, the model's logit scale x "
                 "the cosine; probability, each prompt's softmax among the prompts given (the zero-shot class "
                 "probability; two prompts or more), e.g. --score probability; contrast, the cosine of a prompt "
                 f"minus that of {pairs}. Methods without a gradient of the score (raw_attention, rollout, "
                 "maskclip, clip_surgery, itsm) take only the cosine. An image classifier explains its class "
                 "logit (its default) or its class probability, the softmax over all its classes. A BLIP model names "
                 "its cosine itc and gives itm, its image-text matching probability, which --method itm_gradcam "
                 "explains")


def add_layers(parser, help: str, *, several: bool = False) -> None:
    """``--layers`` of type ``block_indices``; ``several``: space-separated lists too (``--layers -2 -1``), for
    commands without positional arguments (where they would be taken for more layers)."""
    if several:
        parser.add_argument("--layers", type=block_indices, nargs="+", action=FlattenLists, default=[-1],
                            metavar="INDICES", help=help)
    else:
        parser.add_argument("--layers", type=block_indices, default=[-1], metavar="INDICES", help=help)


def add_templates(parser, help: str) -> None:
    parser.add_argument("--templates", choices=TEMPLATES, default="openai",
                        help=f"{help}: OpenAI's 80 prompt templates (default) or the simple ones, e.g. "
                             "'a photo of a {}.'; each class's embedding is the mean over its templates")


def add_run_folder(parser, what: str) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of torch (default: torch's own choice, about one per core)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"discard a previous run in --out (by default {what} with the same settings resumes, "
                             "and other settings are an error)")
    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_MINUTES, metavar="MINUTES",
                        help="under torchrun: minutes a process waits for the others (default %(default)g)")

