"""What each ``gradeclip`` subcommand takes: its one-line summary (``COMMANDS``), its options (``ARGUMENTS``)
and its description (``description``: the docstring of the module it runs, or its own text)."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Callable

from .arguments import (UNSET_SCORE, add_explain_arguments, add_layers, add_memory_budget, add_model_arguments, add_run_folder,
                        add_templates, key_value, positive_int, python_literal)

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
    "synthetic train-classifier": "train the synthetic ViT classifier (colour x shape) on generated scenes, and "
                                  "evaluate it",
    "critique": "measure the critique of Grad-ECLIP (Cui and Fan 2026): the attention-gradient equivalence, official "
                "mode's score shift, faithfulness, sensitivity-n, the sanity check",
}


SYNTHETIC_GROUP = "synthetic"

#: the modules whose ``python -m`` runs a subcommand (their docstrings are the subcommands' descriptions)
ALIASES = {"explain-dataset": "gradeclip_utils.explain_dataset", "evaluate": "gradeclip_utils.evaluate",
           "notebooks": "gradeclip_utils.notebooks", "synthetic train": "gradeclip_utils.synthetic.train",
           "synthetic evaluate": "gradeclip_utils.synthetic.evaluate",
           "synthetic train-classifier": "gradeclip_utils.synthetic.train_classifier",
           "critique": "gradeclip_utils.studies.critique"}


# ---------------------------------------------------------------------------------- subcommands
def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image file (PNG, JPEG, ...)")
    parser.add_argument("prompts", nargs="+", help="one or more text prompts, quoted where they have spaces; for an "
                                                   "image classifier, classes: label names or indices")
    add_model_arguments(parser)
    add_explain_arguments(parser, score=True)
    parser.add_argument("--versus", nargs="+", default=None, metavar="PROMPT",
                        help="with --score contrast: the prompt each prompt is contrasted with, one per prompt and "
                             "in the same order: scene.png \"a red circle\" \"a dog\" --score contrast --versus "
                             "\"a blue circle\" \"a cat\" maps what makes the picture a red circle rather than a "
                             "blue one, and a dog rather than a cat")
    parser.add_argument("--text-layers", type=positive_int, default=8, metavar="N",
                        help="word importance: the last N text blocks, summed (default: 8, as the authors)")
    parser.add_argument("--out", default="gradeclip_explanation.png",
                        help="the figure of the heat maps (.png, .pdf or .svg); the word-importance figures go "
                             "beside it as NAME_words0.png, ... (default: %(default)s)")
    parser.add_argument("--no-words", action="store_true", help="skip word importance (its figures and lines)")


def _explain_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from ..maps_store import ALL, OWN

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
    add_templates(parser, "with --classes")
    add_model_arguments(parser)
    add_explain_arguments(parser, score=True, pairs="the other of its pair, a line \"a red circle | a blue circle\" "
                                                    "of the --prompts file (not with --classes)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                        help="images per forward and backward pass, taken from images of one patch grid "
                             "(default: 8); lower it when memory runs out")
    parser.add_argument("--shard-size", type=positive_int, default=256, metavar="N",
                        help="images per shard file, the unit of work of the processes (default: 256)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="DataLoader worker processes that decode the images (default: 4 on CUDA, 0 on the CPU)")
    add_run_folder(parser, "a folder")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation import DATASETS, DEFAULT_METHODS, EVAL_SCORES, PROTOCOLS

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="synthetic",
                      help="synthetic: held-out scenes of the synthetic world, with exact masks (default); imagenet: "
                           "a folder of class subfolders; folder: a CSV of image,prompt[,mask] rows")
    data.add_argument("--data", default=None, metavar="PATH",
                      help="imagenet: the folder of class subfolders; folder: the CSV (not used by synthetic)")
    data.add_argument("-n", "--n", type=positive_int, default=200, metavar="N",
                      help="number of images (default: 200)")
    add_templates(data, "imagenet")
    data.add_argument("--target", choices=("gt", "pred"), default="gt",
                      help="imagenet: explain the ground-truth class (default) or the predicted one (the curves "
                           "always score the ground truth)")
    add_model_arguments(parser)
    run = parser.add_argument_group("methods and metrics")
    run.add_argument("--methods", default=None, metavar="NAMES",
                     help="comma-separated methods to compare, e.g. --methods grad_eclip,rise,random (default: all "
                          f"that the model's family can run of {', '.join(DEFAULT_METHODS)})")
    run.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                     help="images explained together (default: 16); a batch is also the unit of work of the "
                          "processes under torchrun, so the results do not depend on their number")
    run.add_argument("--score", choices=EVAL_SCORES, default=UNSET_SCORE,
                     help="what the maps explain (and the curves score too): cosine (default), logit or probability, "
                          "each image's class's among every class; methods that cannot explain it are left out and "
                          "named (no contrast: it needs a second class per image). An image classifier: logit (its "
                          "default) or probability, the softmax over all its classes")
    run.add_argument("--protocol", choices=PROTOCOLS, default="project",
                     help="deletion and insertion as this project runs them (default: project) or exactly as the "
                          "Grad-ECLIP authors' scripts do (authors)")
    run.add_argument("--tolerance", type=float, default=4.0, metavar="PIXELS",
                     help="pointing-game tolerance in pixels of the model's input (default: 4, the usual 15 px at 224 "
                          "scaled to the synthetic 64)")
    run.add_argument("--tie-seeds", type=positive_int, default=3, metavar="N",
                     help="project protocol: seeds of the order of tied pixels over which deletion and insertion are "
                          "repeated, to report how much that order moves each AUC (default: 3)")
    run.add_argument("--no-faithfulness", action="store_true", help="skip deletion and insertion")
    run.add_argument("--rise-masks", type=positive_int, default=2000, metavar="N",
                     help="RISE: random masks per image (default: 2000); its time grows with them, its noise shrinks")
    run.add_argument("--rise-plain", action="store_true",
                     help="RISE's plain weighted sum of the masks (default: the mean score subtracted first, which "
                          "removes the masks' coverage noise)")
    run.add_argument("--m2ib-steps", type=positive_int, default=10, metavar="N",
                     help="M2IB: optimisation steps of each map (default: 10)")
    run.add_argument("--m2ib-samples", type=positive_int, default=10, metavar="N",
                     help="M2IB: noise samples per step (default: 10)")
    run.add_argument("--sanity-images", type=int, default=8, metavar="N",
                     help="images of the cascading randomisation sanity check (default: 8; 0 skips it)")
    run.add_argument("--sanity-methods", default=None, metavar="NAMES",
                     help="comma-separated methods of the sanity check (default: all but random)")
    run.add_argument("--timing-images", type=int, default=4, metavar="N",
                     help="images of the speed measurement (default: 4; 0 skips it)")
    run.add_argument("--timing-repeats", type=positive_int, default=5, metavar="N",
                     help="timed runs per method in the speed measurement, after a warm-up (default: 5)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the random baseline, RISE's masks, M2IB's noise, the order of tied pixels and the "
                          "sanity check's randomisation (default: 0)")
    add_memory_budget(run)
    out = parser.add_argument_group("run")
    out.add_argument("--out", default=None, metavar="FOLDER",
                     help="output folder (default: outputs/eval-DATASET)")
    out.add_argument("--doc", default=None, metavar="FILE",
                     help="also write the summary with its plots as this markdown file (the plots go into a "
                          "folder named after it), e.g. --doc docs/results.md")
    out.add_argument("--workers", type=int, default=None, metavar="N",
                     help="DataLoader worker processes that load the images (default: 4 on CUDA, 0 on the CPU, "
                          "where they would compete with the model for cores)")
    add_run_folder(out, "a run")


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
    parser.add_argument("--param", action="append", type=key_value(python_literal), default=[], metavar="NAME=VALUE",
                        help="set any other parameter of the notebooks, its value a Python literal or else text, "
                             "e.g. --param N_SCENES=50 (repeatable; a name no selected notebook has is refused)")
    parser.add_argument("--timeout", type=int, default=1800, metavar="SECONDS",
                        help="seconds allowed per cell (default: 1800)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    parser.add_argument("--list", action="store_true", help="list the notebooks and exit")
    parser.add_argument("--install-lab-settings", action="store_true",
                        help="make JupyterLab in this environment save widget state with notebooks, and exit")


def _synthetic_train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..synthetic.dataset import TRAIN_MIX

    parser.add_argument("--out", required=True, help="the run folder (checkpoint, log, snapshots, exported model)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default: 3000)")
    parser.add_argument("--batch-size", type=positive_int, default=128, metavar="N",
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
    parser.add_argument("--n-zero-shot", type=positive_int, default=700, metavar="N",
                        help="single-object scenes of the zero-shot colour x shape test (default: 700)")
    parser.add_argument("--n-choice", type=positive_int, default=200, metavar="N",
                        help="scenes per caption-choice kind (default: 200)")
    parser.add_argument("--n-localisation", type=positive_int, default=300, metavar="N",
                        help="scenes of the Grad-ECLIP localisation (default: 300)")
    parser.add_argument("--tolerance", type=float, default=4.0, metavar="PIXELS",
                        help="pointing-game tolerance in pixels of the 64 x 64 mask (default: 4)")
    add_layers(parser, "blocks Grad-ECLIP explains for the localisation rows, negative from the end, e.g. "
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


def _synthetic_classifier_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="the run folder (log, exported model, evaluation.json); required "
                                                    "unless --evaluate-only")
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="scenes per step (default: 64)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of AdamW (default: 0.0005)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's weight decay (default: 0.05)")
    parser.add_argument("--warmup", type=int, default=20, metavar="STEPS",
                        help="steps of linear warm-up before the cosine decay (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation (default: 0)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads of torch (default: 2)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="data-generation processes (default: 1; 0: in the training loop)")
    parser.add_argument("--single-share", type=float, default=0.5, metavar="SHARE",
                        help="share of training scenes with one object; the others have 2-4 (default: 0.5)")
    parser.add_argument("--eval-every", type=int, default=50, metavar="STEPS",
                        help="steps between held-out accuracy monitors (default: 50; 0: off)")
    parser.add_argument("--init", choices=("clip", "random"), default="clip",
                        help="the starting weights: clip, the embedded CLIP's image tower with a new head, or random, "
                             "timm's initialisation (default: clip)")
    parser.add_argument("--export", default=None, metavar="FOLDER",
                        help="also export the model here, e.g. --export data/synthetic_classifier (default: only "
                             "OUT/model)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="skip the evaluation of the model card's figures after training")
    parser.add_argument("--evaluate-only", default=None, metavar="MODEL",
                        help="instead of training: print the model card's evaluation table of MODEL "
                             "(synthetic-classifier, or a folder) (default: train)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and batch jobs)")


def _critique_arguments(parser: argparse.ArgumentParser) -> None:
    from ..studies.critique import ALL_PARTS, DEFAULT_RANDOM_MODEL, RANDOM_WEIGHT_PARTS, RANDOM_ZERO_SHOT

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
    data.add_argument("--images", type=positive_int, default=None, metavar="N",
                      help="items of the faithfulness, sensitivity-n and sanity parts (default: 24; --quick: 6)")
    data.add_argument("--zero-shot", type=positive_int, default=None, metavar="N",
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
    random.add_argument("--random-zero-shot", type=positive_int, default=RANDOM_ZERO_SHOT, metavar="N",
                        help="held-out scenes of its score shift, each against the 35 class prompts "
                             "(default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="FOLDER", help="the folder of results.json")
    out.add_argument("--doc", default=None, metavar="FILE",
                     help="also write the markdown page here, e.g. --doc docs/critique.md (default: only printed)")


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "explain": _explain_arguments, "explain-dataset": _explain_dataset_arguments, "evaluate": _evaluate_arguments,
    "notebooks": _notebooks_arguments, "methods": lambda parser: None,
    "synthetic train": _synthetic_train_arguments, "synthetic evaluate": _synthetic_evaluate_arguments,
    "synthetic train-classifier": _synthetic_classifier_arguments,
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


def description(command: str) -> str:
    if command == "explain":
        return EXPLAIN_DESCRIPTION
    if command in ALIASES:
        return importlib.import_module(ALIASES[command]).__doc__
    return COMMANDS[command][0].upper() + COMMANDS[command][1:] + "."

