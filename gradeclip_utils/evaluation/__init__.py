"""Compare explanation methods on localisation, faithfulness, the sanity check and speed.

    python -m gradeclip_utils.evaluate                          # the synthetic world (offline default)
    python -m gradeclip_utils.evaluate --dataset imagenet --data /path/to/val --model ViT-B-16 --pretrained openai
    python -m gradeclip_utils.evaluate --dataset folder --data images/prompts.csv   # image,prompt[,mask] rows
    python -m gradeclip_utils.evaluate --dataset imagenet --data /path/to/val --model ViT-B-16 --pretrained openai \
        --protocol authors --target pred     # the Grad-ECLIP authors' deletion / insertion, number for number

Protocols (deletion and insertion; see PROTOCOL_TEXT and docs/method.md section 7):
  project    (default) maps and perturbations on the model's preprocessed pixels; tied pixels ordered by a
             seeded random permutation per image, shared by every method, repeated over --tie-seeds seeds
             and the range of each method's mean AUC reported; localisation on the same maps.
  authors    the Grad-ECLIP authors' imagenet_eval_deletion.py / imagenet_eval_insertion.py exactly:
             640 short-side shrink, perturbation of the native picture before preprocessing, int(HW/200)
             pixels per step, new random values per step, numpy argsort order of the min-max-normalised-
             then-resized map, accuracy against the ground truth with either target, their variants of
             Grad-ECLIP (official mode, out_proj q and k), raw attention, MaskCLIP, Grad-CAM and rollout,
             and what each method explains (the classifier's row; the bare class name for GAME, rollout
             and M2IB; the class name and their 59 names, prompt-ensembled, for CLIP Surgery).

Methods: by default every method the model's family can run (a ResNet CLIP has no M2IB, ITSM or LeGrad;
the summary names what was left out and why); --methods names them (one the family cannot run is an error).

Data sets:
  synthetic  held-out scenes of the synthetic world (2-4 objects), one uniquely nameable object each,
             prompted by its name ("a red circle") and scored against its exact visible mask; the
             zero-shot classifier is the 35 colour x shape prompts.
  imagenet   a folder of class subfolders (ImageNet's wnid folders get the standard class names; other
             folders are named by their folder name); zero-shot classifier from the class names and the
             80 OpenAI templates; the target is the ground-truth class (``--target pred``: the predicted
             class). No masks: localisation metrics are left out.
  folder     images with a CSV of ``image,prompt[,mask]`` (paths relative to the CSV's folder; a mask
             is an image whose non-zero pixels mark the target); the classifier is the CSV's prompts.

Per (image, method): pointing game (with a tolerance and strict), energy pointing game, IoU of the map
thresholded at its mean, and deletion / insertion curves with their AUC (see ``AUC_DEFINITION``).
Per method: time per (image, prompt) as a multiple of one plain image forward pass, and the cascading
randomisation sanity check on a few images. Writes ``per_image.csv``, ``timing.csv``, ``sanity.csv``,
``summary.md`` (means with 95% bootstrap confidence intervals) and plots into ``--out``. A run that is
interrupted resumes where it stopped when started again with the same settings.

Several processes: ``torchrun --nproc-per-node N -m gradeclip_utils.evaluate ...`` (also under ``srun`` or
``accelerate launch``) runs on ``cuda:LOCAL_RANK`` per rank (NCCL), or on the CPU with gloo (``--device cpu``),
and writes the same files as one process (see ``gradeclip_utils.distributed``). The work units are the
batches one process runs (items sorted by target, cut every ``--batch-size``), the same whatever N; batch i
goes to rank i % N. A run with fewer batches than ranks cuts them finer, ceil(items / N) items each, so that
every rank works, and records that batch size in ``config.json`` (``distributed.batch_size``): one process
with ``--batch-size`` set to it writes the same files. Results go to part files under ``OUT/parts/`` as they finish (each rank its own) and
rank 0 merges them, in the order one process writes, into ``per_image.csv`` and ``sanity.csv`` once every
rank has finished. The timing runs once, on rank 0, while the other ranks wait (so that it is not disturbed);
the sanity check is split by method (method i of the list on rank i % N). ``config.json`` records
``"distributed": {"world_size": N, "items_per_rank": [...]}``; a run stopped midway resumes from its part
files, also with another N. ``run.json`` gives the throughput of the per-image phase.

From Python: ``evaluate(model, synthetic_set(model, 100), "outputs/eval", methods=["grad_eclip", "random"])``,
or with the settings as one object, ``evaluate(model, data, out, EvalConfig(rise_masks=300, tie_seeds=1))``.

The package: ``config.py`` (``EvalConfig``, the run's settings), ``datasets.py`` (the data sets),
``methods.py`` (which methods, their options, their maps), ``protocols.py`` (deletion and insertion under
each protocol), ``timing.py`` (the speed table), ``runner.py`` (``evaluate``, phase by phase),
``report.py`` and ``plots.py`` (the summary, its plots, the committed document) and ``command.py``
(the command line's ``run_command``).
"""

from ..metrics import AUC_DEFINITION
from .command import run_command
from .config import EVAL_SCORES, PROTOCOLS, EvalConfig
from .datasets import DATASETS, EvalItem, EvalSet, folder_set, imagenet_set, synthetic_set
from .methods import (DEFAULT_METHODS, RANDOM, RANDOM_SPEC, batch_maps, default_methods, explained_targets, item_seed,
                      method_options, method_spec, random_maps, run_method, unsupported_methods)
from .plots import PLOTS, plot_results, write_doc
from .protocols import (LOCALISATION, MEASURES, TIE_MEASURES, AuthorsTargets, authors_faithfulness, authors_maps,
                        authors_picture, curve_fractions, project_faithfulness, tie_seeds_of)
from .report import PROTOCOL_TEXT, summarise, tie_spread
from .runner import evaluate
from .timing import measure_speed, speed_ratios

__all__ = ["AUC_DEFINITION", "DATASETS", "DEFAULT_METHODS", "EVAL_SCORES", "LOCALISATION", "MEASURES", "PLOTS",
           "PROTOCOLS", "PROTOCOL_TEXT", "RANDOM", "RANDOM_SPEC", "TIE_MEASURES", "AuthorsTargets", "EvalConfig",
           "EvalItem", "EvalSet", "authors_faithfulness", "authors_maps", "authors_picture", "batch_maps",
           "curve_fractions", "default_methods", "evaluate", "explained_targets", "folder_set", "imagenet_set",
           "item_seed", "measure_speed", "method_options", "method_spec", "plot_results", "project_faithfulness",
           "random_maps", "run_command", "run_method", "speed_ratios", "summarise", "synthetic_set", "tie_seeds_of",
           "tie_spread", "unsupported_methods", "write_doc"]
