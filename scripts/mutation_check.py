"""Which plausible bugs does the test suite catch? A rerunnable mutation check.

    python scripts/mutation_check.py                 # every mutation, each against its relevant tests
    python scripts/mutation_check.py --full          # each against the whole suite (slow: minutes each)
    python scripts/mutation_check.py --only NAME ... # some of them (names as in --list)
    python scripts/mutation_check.py --list

Each mutation is one hand-written edit of the package: a file, an exact snippet of it and its
replacement, as a reviewer would try it (a dropped bias, a wrong slice, a default changed, an
off-by-one). The repository is copied once to a scratch folder; the unmutated copy must pass the
selected tests first; then each mutation is applied to the copy alone, its tests run (``pytest -x``:
the first failure ends the run), and the file is restored. A mutation is *caught* when a test fails,
*missed* when all pass. Every snippet must occur exactly once in its file, or the check stops before
running anything: when code moves, the list has to move with it instead of silently testing nothing.

Not part of the default test command. Exit status: 0 when every mutation is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE = ("tests/methods/test_grad_eclip.py",)
BASELINES = ("tests/methods/test_baselines.py",)
METRICS = ("tests/metrics/test_localisation_metrics.py", "tests/metrics/test_faithfulness.py")
EVALUATION = ("tests/methods/test_tolerance_defaults.py", "tests/evaluation/test_evaluate.py",
              "tests/synthetic/test_synthetic_model.py")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str


ENGINE = "gradeclip_utils/adapters/transformer.py"  # the family-neutral explicit blocks
OPEN_CLIP = "gradeclip_utils/adapters/openclip.py"
GRAD_ECLIP = "gradeclip_utils/methods/grad_eclip.py"
FAITHFULNESS = "gradeclip_utils/metrics/faithfulness.py"
LOCALISATION = "gradeclip_utils/metrics/localisation.py"
MAPS = "gradeclip_utils/maps.py"
REGISTRY = "gradeclip_utils/methods/registry.py"
OPTIONS = "tests/methods/test_method_options.py"
DISTRIBUTED = "tests/jobs/test_distributed.py"
BOUNDARIES = "tests/core/test_boundaries.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ the three of issue 13
    Mutation("engine-in-proj-bias", ENGINE,
             "q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)",
             "q, k, v = F.linear(h, weight).chunk(3, dim=-1)",
             CORE + BASELINES, "explicit blocks drop the packed in-projection's bias"),
    Mutation("out-proj-qk-bias", GRAD_ECLIP,
             "q, k = F.linear(q, weight, bias), F.linear(k, weight, bias)",
             "q, k = F.linear(q, weight), F.linear(k, weight)",
             CORE, "qk='out_proj' spatial weight drops the output projection's bias"),
    Mutation("faithfulness-square-count", FAITHFULNESS,
             "round(n * step * height * width)", "round(n * step * height * height)",
             METRICS + ("tests/evaluation/test_evaluate.py",), "pixels per step counted as H x H instead of H x W"),
    Mutation("evaluate-tolerance-8", "gradeclip_utils/evaluation/config.py",
             "    tolerance: float = 4.0\n", "    tolerance: float = 8.0\n",
             METRICS + EVALUATION, "method evaluation's default pointing tolerance 8 px instead of 4"),
    Mutation("synthetic-tolerance-8", "gradeclip_utils/synthetic/evaluate.py",
             'offset: int = OFFSETS["localisation"], tolerance: float = 4.0,',
             'offset: int = OFFSETS["localisation"], tolerance: float = 8.0,',
             METRICS + EVALUATION, "synthetic localisation's default pointing tolerance 8 px instead of 4"),
    # ------------------------------------------------------------------ adapters and their engine
    Mutation("engine-out-proj-bias", ENGINE,
             "return self.post_attn(self.out_proj(self.inner_norm(out)))",
             "return self.post_attn(F.linear(self.inner_norm(out), self.out_proj.weight))",
             CORE + BASELINES, "explicit blocks drop the output projection's bias"),
    Mutation("engine-values-are-keys", ENGINE,
             "return self.qkv(self.ln_1(x))[2]", "return self.qkv(self.ln_1(x))[1]",
             BASELINES, "value path (MaskCLIP, CLIP Surgery) takes the keys"),
    Mutation("open-clip-ln-post-affine", OPEN_CLIP,
             "pooled = visual.ln_post(pooled)",
             "pooled = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=visual.ln_post.eps)",
             CORE + BASELINES, "image head drops ln_post's weight and bias"),
    Mutation("engine-official-every-block", ENGINE,
             'heads = 1 if (capture and mode == "official") else block.heads',
             'heads = 1 if mode == "official" else block.heads',
             CORE, "official mode recomputes every explicit block with one head, not only the explained one"),
    Mutation("open-clip-layerscale-skipped", OPEN_CLIP,
             "post_attn = block.ls_1 if _is_identity(ln_attn) else",
             "post_attn = (lambda t: t) if _is_identity(ln_attn) else",
             CORE, "explicit open_clip blocks skip LayerScale on the attention branch"),
    Mutation("engine-pos-bilinear", ENGINE,
             'size=tuple(grid), mode="bicubic"', 'size=tuple(grid), mode="bilinear"',
             CORE, "positional embeddings interpolated bilinearly instead of bicubically"),
    # ------------------------------------------------------------------ Grad-ECLIP
    Mutation("grad-eclip-relu-after-sum", GRAD_ECLIP,
             "            contribution = contribution.relu()\n"
             "            total = contribution if total is None else total + contribution\n"
             "        grid = trace.grid",
             "            total = contribution if total is None else total + contribution\n"
             "        total = total.relu()\n"
             "        grid = trace.grid",
             CORE, "image maps: blocks summed before the ReLU instead of ReLU per block"),
    Mutation("grad-eclip-text-relu-per-block", GRAD_ECLIP,
             "            total = contribution if total is None else total + contribution\n"
             "        relevance = total.relu()",
             "            total = contribution.relu() if total is None else total + contribution.relu()\n"
             "        relevance = total.relu()",
             CORE, "text relevance: ReLU per block instead of after the sum"),
    Mutation("grad-eclip-minmax-with-cls", GRAD_ECLIP,
             "relevance = F.cosine_similarity(query[:, None, :], k[:, first_key:], dim=-1)\n    return minmax(relevance)",
             "relevance = F.cosine_similarity(query[:, None, :], k, dim=-1)\n    return minmax(relevance)[:, first_key:]",
             CORE, "loosened attention min-max normalised over the class token's key too"),
    Mutation("grad-eclip-minmax-no-shift", MAPS,
             "torch.where(span > 0, (values - low) /", "torch.where(span > 0, values /",
             CORE, "min-max normalisation without subtracting the minimum"),
    Mutation("grad-eclip-jacobian-cosine", GRAD_ECLIP,
             "(targets.float()[None] - scores.detach()[..., None] * f_hat[:, None])",
             "(targets.float()[None])",
             CORE, "many-prompt path: dS/df without the -S f_hat term of the cosine's gradient"),
    Mutation("text-keeps-start-token", "gradeclip_utils/explain.py",
             "kept = relevance[:, k, 1:int(eos[k])]", "kept = relevance[:, k, 0:int(eos[k]) - 1]",
             CORE, "word importance keeps the start token and drops the last word"),
    # ------------------------------------------------------------------ baselines
    Mutation("rollout-no-identity", "gradeclip_utils/methods/rollout.py",
             "attention = attention + torch.eye(attention.shape[-1], device=attention.device)",
             "attention = attention + 0 * torch.eye(attention.shape[-1], device=attention.device)",
             BASELINES, "rollout without the residual identity"),
    Mutation("game-abs-not-clamp", "gradeclip_utils/methods/game.py",
             ".clamp_(min=0).mean(dim=2)", ".abs_().mean(dim=2)",
             BASELINES, "Chefer relevance takes |grad * A| instead of its positive part"),
    Mutation("grad-cam-with-cls-token", "gradeclip_utils/methods/grad_cam.py",
             'first = 0 if variant == "authors" else 1', "first = 0",
             BASELINES, "Grad-CAM channel weights average the class token's gradient too"),
    Mutation("rise-normalisation", "gradeclip_utils/methods/rise.py",
             "saliency /= masks * p", "saliency /= masks",
             BASELINES, "RISE divides by N instead of N p"),
    # ------------------------------------------------------------------ metrics
    Mutation("pointing-disk-open", LOCALISATION,
             "disk = ((yy ** 2 + xx ** 2) <= radius ** 2 + 1e-9)", "disk = ((yy ** 2 + xx ** 2) < radius ** 2)",
             METRICS, "tolerance disk excludes pixels exactly at the tolerance"),
    Mutation("energy-abs", LOCALISATION,
             "pos = mp.clamp_min(0)", "pos = mp.abs()",
             METRICS, "energy pointing game counts negative values as mass"),
    Mutation("iou-threshold-ge", LOCALISATION,
             "binary = mp > mp.mean(dim=(-2, -1), keepdim=True)", "binary = mp >= mp.mean(dim=(-2, -1), keepdim=True)",
             METRICS, "IoU thresholds at map >= mean instead of > mean"),
    Mutation("resize-align-corners", MAPS,
             'mode="bilinear", align_corners=False)\n    return up.reshape',
             'mode="bilinear", align_corners=True)\n    return up.reshape',
             METRICS + CORE + ("tests/robustness/test_robustness_images.py", "tests/interface/test_plotting_cli.py"),
             "maps resized with align_corners=True (the metrics' and the heat maps' one resizing)"),
    Mutation("auc-not-normalised", FAITHFULNESS,
             "    return area / span", "    return area",
             METRICS, "AUC not divided by the x-range"),
    Mutation("insertion-grey-start", FAITHFULNESS,
             "black = ((0.0 - mean_t) / std_t)", "black = ((0.5 - mean_t) / std_t)",
             METRICS, "insertion starts from a grey picture instead of a black one"),
    Mutation("ranks-ascending", FAITHFULNESS,
             "return permutation[torch.sort(flat[permutation], descending=True, stable=True).indices]",
             "return permutation[torch.sort(flat[permutation], descending=False, stable=True).indices]",
             METRICS, "pixels ordered least important first"),
    # ------------------------------------------------------------------ inputs
    Mutation("native-size-floor", "gradeclip_utils/inputs.py",
             "max(1, math.floor(width / pw + 0.5))", "max(1, math.floor(width / pw))",
             CORE + ("tests/robustness/test_robustness_images.py",), "native width rounded down instead of to the nearest patch"),
    # ------------------------------------------------------------------ evaluation and the embedded model
    Mutation("bootstrap-90-percent", "gradeclip_utils/stats.py",
             "resamples: int = 1000, tail: float = 0.025, seed", "resamples: int = 1000, tail: float = 0.05, seed",
             ("tests/evaluation/test_evaluate.py",), "bootstrap interval at 90% instead of 95%"),
    Mutation("synthetic-layers-second-last", "gradeclip_utils/synthetic/evaluate.py",
             "batch_size: int = 64, layers=(-1,), mode: str = \"faithful\")",
             "batch_size: int = 64, layers=(-2,), mode: str = \"faithful\")",
             ("tests/synthetic/test_synthetic_model.py",), "published localisation figures from the second-last block"),
    Mutation("synthetic-zero-shot-offset", "gradeclip_utils/synthetic/evaluate.py",
             'def zero_shot_eval(model, n: int = 700, offset: int = OFFSETS["zero_shot"])',
             'def zero_shot_eval(model, n: int = 700, offset: int = OFFSETS["choice"])',
             ("tests/synthetic/test_synthetic_model.py",), "zero-shot figures on other held-out scenes than published"),
    # ------------------------------------------- the method specs, the runner, the scale-out, inputs, exports
    Mutation("spec-every-setting-used", REGISTRY,
             "if setting in self.uses or _same_setting(setting, value, SETTING_DEFAULTS[setting]):",
             "if setting in SETTINGS or _same_setting(setting, value, SETTING_DEFAULTS[setting]):",
             (OPTIONS,), "every method accepts layers, mode and qk, also those it ignores (LeGrad's layers)"),
    Mutation("legrad-declares-layers", "gradeclip_utils/methods/legrad.py",
             '    instead={"layers": "its layer_index option sets the block it starts from"},\n',
             '    uses=("layers",),\n    instead={"layers": "its layer_index option sets the block it starts from"},\n',
             (OPTIONS,), "LeGrad declares the layers it ignores (layer_index sets its depth)"),
    Mutation("no-spatial-declares-qk", "gradeclip_utils/methods/grad_eclip_no_spatial.py",
             '    uses=("layers", "mode"),\n', "",
             (OPTIONS,), "Grad-ECLIP without the spatial weight takes qk, which only enters that weight"),
    Mutation("settings-record-unused-layers", "gradeclip_utils/config.py",
             "            if not self.uses(setting):\n",
             '            if not self.uses(setting) and setting != "layers":\n',
             (OPTIONS,), "a result records the layers of a method that does not apply them"),
    Mutation("runner-drops-qk", "gradeclip_utils/session.py",
             'layers=adapter.resolve_layers(config.layers, tower), mode=config.mode, qk=config.qk,',
             'layers=adapter.resolve_layers(config.layers, tower), mode=config.mode, qk="raw",',
             (OPTIONS,), "the runner gives image methods the default qk whatever the config says"),
    Mutation("units-not-cut", "gradeclip_utils/jobs/distributed.py",
             "    if world_size > 1 and math.ceil(count / size) < world_size:\n",
             "    if world_size > 1 and math.ceil(count / size) < world_size - 1:\n",
             (f"{DISTRIBUTED}::test_units_are_cut_finer_when_there_are_fewer_than_ranks",),
             "a run with one batch fewer than ranks leaves a rank idle"),
    Mutation("units-ceil-only", "gradeclip_utils/jobs/distributed.py",
             "return even if math.ceil(count / even) >= world_size else max(1, count // world_size)",
             "return even",
             (f"{DISTRIBUTED}::test_every_rank_works_whenever_there_are_enough_items",),
             "ceil(items / ranks) items per batch, which leaves ranks idle (12 items on 5 ranks)"),
    Mutation("evaluate-batches-uncut", "gradeclip_utils/evaluation/runner.py",
             "folder, previous, _batches(data.items, unit), unit, budget, chunks)",
             "folder, previous, _batches(data.items, config.batch_size), unit, budget, chunks)",
             (f"{DISTRIBUTED}::test_a_run_with_fewer_batches_than_ranks_busies_every_rank",),
             "the evaluation plans its batches without the cut: 6 items on 2 ranks all on rank 0"),
    Mutation("dataset-shards-uncut", "gradeclip_utils/explain_dataset.py",
             "        shards = _plan(sizes, min(self.batch_size, unit), unit)\n",
             "        shards = _plan(sizes, self.batch_size, self.shard_size)\n",
             ("tests/jobs/test_explain_dataset.py::test_two_processes_cut_a_single_shard_so_that_both_work",),
             "the dataset job plans one shard for 8 images on 2 ranks: rank 1 idle"),
    Mutation("native-size-patch-sides-swapped", "gradeclip_utils/inputs.py",
             "math.floor(width / pw + 0.5)), max(1, math.floor(height / ph + 0.5))",
             "math.floor(width / ph + 0.5)), max(1, math.floor(height / pw + 0.5))",
             (f"{BOUNDARIES}::test_native_size_rounds_each_side_to_the_nearest_patch_at_every_boundary",),
             "native size rounds the width to the patch height (the same for square patches)"),
    Mutation("exif-mirror-ignored", "gradeclip_utils/inputs.py",
             "    if orientation in (None, 1):\n", "    if orientation in (None, 1, 2):\n",
             (f"{BOUNDARIES}::test_every_exif_orientation_gives_the_upright_picture",),
             "a mirrored picture (EXIF orientation 2) is left mirrored"),
    Mutation("authors-step-rounded", "gradeclip_utils/metrics/faithfulness.py",
             "    once = max(1, int(height * width / (2 * steps)))\n",
             "    once = max(1, round(height * width / (2 * steps)))\n",
             (f"{BOUNDARIES}::test_the_authors_curves_change_int_hw_over_200_pixels_per_step",),
             "the authors' pixels per step rounded instead of truncated"),
    Mutation("prompt-tensors-not-normalised", "gradeclip_utils/prompts.py",
             "        targets = F.normalize(prompts.detach().float().to(model.device), dim=-1)\n",
             "        targets = prompts.detach().float().to(model.device)\n",
             (f"{BOUNDARIES}::test_prompt_embeddings_scaled_by_a_constant_give_the_same_maps_and_scores",),
             "prompt embeddings given as tensors are used without normalising them"),
    Mutation("manifest-explanation-wins", "gradeclip_utils/export.py",
             "            merged.update(getattr(explanation, \"settings\", {}) or {})\n        merged.update(settings or {})\n",
             "            merged.update(getattr(explanation, \"settings\", {}) or {})\n"
             "        merged = {**(settings or {}), **merged}\n",
             (f"{BOUNDARIES}::test_a_manifest_records_the_explanations_settings_and_lets_explicit_ones_win",),
             "a manifest records the explanation's settings over the ones given explicitly"),
    Mutation("manifest-exporter-model-wins", "gradeclip_utils/export.py",
             "            fields[key] = settings.get(key, described.get(key))\n",
             "            fields[key] = described.get(key, settings.get(key))\n",
             (f"{BOUNDARIES}::test_a_manifest_records_the_explanations_settings_and_lets_explicit_ones_win",),
             "a manifest names the exporter's model instead of the one that made the explanation"),
    Mutation("authors-curves-score-explained", "gradeclip_utils/evaluation/protocols.py",
             "heatmap, classifier.to(model.device), item.label,",
             "heatmap, classifier.to(model.device), item.explained,",
             (f"{BOUNDARIES}::test_the_authors_curves_score_the_label_while_the_map_explains_the_target",),
             "--target pred: the authors' curves score the predicted class instead of the ground truth"),
    Mutation("explorer-cache-ignores-mode", "gradeclip_utils/widgets/explorer.py",
             """        key = ("image", state["image"], tuple(state["prompts"]), config.method, config.layers, config.mode,
               config.resolution)""",
             """        key = ("image", state["image"], tuple(state["prompts"]), config.method, config.layers,
               config.resolution)""",
             ("tests/widgets/test_widgets.py::test_prompt_image_mode_and_method_changes",),
             "the explorer's cache serves the faithful mode's map after a switch to the official mode"),
)


def check_snippets(mutations) -> None:
    """Every snippet occurs exactly once in its file; otherwise stop, naming every problem."""
    problems = []
    for m in mutations:
        path = ROOT / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text().count(m.original)
        if count != 1:
            problems.append(f"{m.name}: snippet found {count} times in {m.file} (need exactly 1):\n    "
                            + m.original.replace("\n", "\n    "))
    if problems:
        sys.exit("mutation check: the list no longer matches the code; update it first.\n" + "\n".join(problems))


def scratch_copy() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mutation-check-"))
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "outputs", "runs", "*.pyc",
                                    ".ipynb_checkpoints")
    shutil.copytree(ROOT, folder / "repo", ignore=ignore, symlinks=True)
    return folder / "repo"


def run_tests(repo: Path, tests, timeout: float) -> tuple[str, str, float]:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.time()
    try:
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - start
    seconds = time.time() - start
    output = done.stdout + done.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    if done.returncode == 0:
        return "missed", "", seconds
    if done.returncode == 1:
        return "caught", failed[0] if failed else "?", seconds
    return f"error (pytest exit {done.returncode})", output.strip().splitlines()[-1] if output.strip() else "", seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--full", action="store_true", help="run the whole suite for every mutation")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per test run (default 1800)")
    args = parser.parse_args(argv)
    mutations = list(MUTATIONS)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutations})
        if unknown:
            parser.error(f"unknown mutations {unknown}; see --list")
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:32s} {m.file}: {m.what}")
        return 0
    check_snippets(mutations)
    repo = scratch_copy()
    try:
        all_tests = ("tests",) if args.full else tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        print(f"scratch copy: {repo}\nunmutated run of {' '.join(all_tests)} ...", flush=True)
        status, detail, seconds = run_tests(repo, all_tests, args.timeout)
        if status != "missed":  # "missed" = all passed
            sys.exit(f"the unmutated copy does not pass its tests ({status} {detail}); fix that first")
        print(f"unmutated: all pass ({seconds:.0f} s)\n", flush=True)
        rows = []
        for m in mutations:
            path = repo / m.file
            source = path.read_text()
            path.write_text(source.replace(m.original, m.replacement, 1))
            try:
                status, detail, seconds = run_tests(repo, ("tests",) if args.full else m.tests, args.timeout)
            finally:
                path.write_text(source)
            rows.append((m, status, detail, seconds))
            print(f"{m.name:32s} {status:8s} {seconds:6.0f} s  {detail}", flush=True)
    finally:
        shutil.rmtree(repo.parent, ignore_errors=True)
    caught = sum(status == "caught" for _, status, _, _ in rows)
    print(f"\n| mutation | file | what | result | first failing test | s |\n|---|---|---|---|---|---|")
    for m, status, detail, seconds in rows:
        print(f"| {m.name} | {m.file.replace('gradeclip_utils/', '')} | {m.what} | {status} | "
              f"{detail.replace('|', '/')} | {seconds:.0f} |")
    print(f"\n{caught} of {len(rows)} mutations caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
