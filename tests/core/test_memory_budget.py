"""One memory budget for every batched path (``gradeclip_utils/budget.py``): the estimates are the formulas
they state, the chunks a budget gives are recorded and repeat when passed back, a budget below one unit is
refused before any work with the bytes it needs, and every path cut into the smallest chunks gives what one
big chunk gives: images and prompts (GAME), images (Grad-ECLIP, rollout), masks per forward (RISE), noise
samples per forward (M2IB), perturbed pictures per forward (deletion and insertion) and the evaluation's
per-image values."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
import gradeclip_utils.evaluation as ev
from gradeclip_utils import budget, cli
from gradeclip_utils.evaluation import methods as eval_methods
from gradeclip_utils.methods import get_spec
from gradeclip_utils.methods.rise import generate_masks
from support.spread import assert_within_spread

PIXELS = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(5))
PROMPTS = ["a red circle", "a blue square", "a green triangle"]
GRID = (6, 6)  # the tiny model: 48 px at patch 8
#: the methods' options that keep them quick on the tiny model
QUICK = {"rise": {"masks": 24}, "m2ib": {"steps": 2, "samples": 4}}
#: maps of a batch cut otherwise: float rounding of the image batch's matrix products (images are independent);
#: the bound docs/reproducibility.md states for another batch size ("float noise ... every energy, IoU and area
#: share by less than 1e-5"). Measured: up to 1.2e-6 (a ResNet's convolutions on two threads), 0 to 1e-6 otherwise
RELATIVE = 1e-5


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def smallest(model, method: str, count: int = len(PROMPTS), **options) -> int:
    """The budget of one image with one unit of ``method``'s inner chunk: the smallest chunks there are."""
    cost = budget.method_cost(model.adapter, get_spec(method), GRID, count, options,
                              model.adapter.resolve_layers((-1,), "image"))
    return cost.total(1, 1 if cost.option is not None else 0)


# ------------------------------------------------------------------------------------ the estimates
def test_the_estimates_are_the_stated_formulas(tiny):
    adapter = tiny.adapter
    width, heads, tokens = 64, 4, 37  # the tiny ViT: 64 wide, 4 heads, 6 x 6 patches and the class token
    assert adapter.image.block_shape() == (width, heads) and adapter.image.trunk_map() is None
    assert adapter.text.block_shape() == (48, 4)
    # bytes of a block's values (fp32) and the allocator's share
    without = 4 * (budget.FORWARD_PER_TOKEN * width + budget.ATTENTION_MAPS * heads * tokens) * tokens + 2 ** 19
    kept = 4 * (budget.ACTIVATIONS_PER_TOKEN * width + budget.ATTENTION_MAPS * heads * tokens) * tokens + 2 ** 19
    assert budget.ALLOCATOR_SLACK == 2 ** 19
    assert budget.image_forward_bytes(adapter, GRID) == without
    assert budget.image_forward_bytes(adapter, GRID, graph_blocks=2) == without + 2 * kept
    assert budget.backward_bytes(adapter, GRID) == budget.BACKWARD_COPIES * without + 4 * heads * tokens ** 2
    assert budget.explicit_bytes(adapter, GRID) == 4 * (4 * width + budget.ATTENTION_MAPS * heads * tokens) * tokens
    assert budget.tokens_bytes(adapter, GRID) == 4 * tokens * width
    assert budget.map_bytes(GRID, 5) == 4 * 5 * 36 and budget.picture_bytes(adapter, GRID) == 4 * 3 * 48 * 48
    # an undeclared method: a forward with one block's graph, and its maps
    assert budget.default_cost(adapter, GRID, 3).image == without + kept + 4 * 3 * 36


def test_a_resnet_is_estimated_with_its_first_stage(tmp_path):
    from support.families import preprocess, reference_open_clip, tokenizer

    model = ge.wrap_model(reference_open_clip(resnet=True), preprocess(), tokenizer(), name="tiny-resnet")
    tower = model.adapter.image
    channels, stride = tower.trunk_map()
    assert stride == 4 and channels == tower.visual.layer1[-1].bn3.num_features
    width, heads = tower.block_shape()
    grid = budget.grid_of(model.adapter, model.adapter.image_size)  # 64 px at stride 32: 2 x 2
    plain = (budget.FORWARD_PER_TOKEN * width + budget.ATTENTION_MAPS * heads * 5) * 5
    trunk = budget.TRUNK_COPIES * channels * 16 * 16
    assert budget.image_forward_bytes(model.adapter, grid) == 4 * (plain + trunk) + budget.ALLOCATOR_SLACK
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    whole = ge.explain_image(model, pixels, PROMPTS, memory_budget=2 ** 40)
    one = budget.method_cost(model.adapter, get_spec("grad_eclip"), grid, 3, {}, [0]).total(1, 0)
    chunked = ge.explain_image(model, pixels, PROMPTS, memory_budget=one)
    assert chunked.settings["image_chunk"] == 1 and relative(chunked.maps, whole.maps) < RELATIVE


def test_sizes_read_with_their_suffixes():
    assert budget.parse_bytes("2G") == 2 * 2 ** 30 and budget.parse_bytes("512M") == 512 * 2 ** 20
    assert budget.parse_bytes("1.5GiB") == 3 * 2 ** 29 and budget.parse_bytes("1000") == 1000
    assert budget.parse_bytes(" 64 kb ") == 64 * 1024
    for bad in ("", "two", "-1G", "5X", "1e9"):
        with pytest.raises(ValueError, match="expected a size in bytes"):
            budget.parse_bytes(bad)


def test_a_plan_fills_the_inner_chunk_first_then_the_images():
    cost = budget.Cost(image=100, unit=10, option="chunk", limit=16, unit_name="target", fixed=50)
    # 1000 bytes: 16 targets for one image (100 + 160), then (1000 - 50) // 260 = 3 images
    assert budget.plan(cost, 1000, 8) == budget.Plan(3, {"chunk": 16}, 50 + 3 * 260)
    # 300 bytes: (300 - 50 - 100) // 10 = 15 targets, one image
    assert budget.plan(cost, 300, 8) == budget.Plan(1, {"chunk": 15}, 300)
    assert budget.plan(budget.Cost(image=100), 1000, 4).images == 4  # never more images than asked for
    # passes of 64 units over the call's images (RISE): images first, each pass's share at most 64 / images
    rise = budget.Cost(image=10, unit=1, option="mask_chunk", limit=64, unit_name="mask", fixed=100, pass_units=64)
    assert budget.plan(rise, 10_000, 16) == budget.Plan(16, {"mask_chunk": 4}, 100 + 16 * 14)
    assert budget.plan(rise, 100 + 16 * 12, 16) == budget.Plan(16, {"mask_chunk": 2}, 100 + 16 * 12)
    assert budget.plan(rise, 100 + 4 * 11, 16) == budget.Plan(4, {"mask_chunk": 1}, 100 + 4 * 11)
    with pytest.raises(ValueError, match=r"game: a memory budget of 159 bytes cannot hold one image with one target, "
                                         r"which needs about 160 bytes \(0\.0 MiB; 50 bytes of it for masks\)"):
        budget.plan(budget.Cost(image=100, unit=10, option="chunk", limit=4, unit_name="target", fixed=50,
                                fixed_what="masks"), 159, 1, what="game")
    with pytest.raises(ValueError, match="memory_budget must be a number of bytes"):
        budget.plan(cost, -1, 1)


# -------------------------------------------------------------------------------------- explain_image
@pytest.mark.parametrize("method", ["grad_eclip", "rollout", "game", "game_last", "rise", "m2ib", "grad_cam"])
def test_one_unit_per_chunk_gives_the_maps_of_one_big_chunk(tiny, method):
    """The smallest chunks (one image per call, one target / mask / noise sample per pass) against one chunk of
    everything: images are independent and the inner chunks draw the same masks and noise, so only the float
    rounding of the batch's matrix products differs; the chunks are recorded."""
    options = QUICK.get(method, {})
    whole = ge.explain_image(tiny, PIXELS, PROMPTS, method=method, memory_budget=2 ** 40, progress=False, **options)
    chunked = ge.explain_image(tiny, PIXELS, PROMPTS, method=method, memory_budget=smallest(tiny, method, **options),
                               progress=False, **options)
    assert whole.settings["image_chunk"] == 3 and chunked.settings["image_chunk"] == 1
    inner = {"game": "chunk", "game_last": "chunk", "rise": "mask_chunk", "m2ib": "sample_chunk"}.get(method)
    if inner is not None:
        assert chunked.settings[inner] == 1 and chunked.config.options[inner] == 1
        assert whole.settings[inner] == {"chunk": 3, "mask_chunk": 24, "sample_chunk": 4}[inner]
    assert relative(chunked.maps, whole.maps) < RELATIVE and relative(chunked.scores, whole.scores) < RELATIVE


@pytest.mark.parametrize("method, option", [("rise", "mask_chunk"), ("m2ib", "sample_chunk"), ("game", "chunk")])
def test_the_inner_chunk_alone_changes_nothing(tiny, method, option):
    """The same images per call, the inner chunk cut to one: the same masks and noise (drawn whole, then cut)
    and the same sums. M2IB's maps are identical (its rows' gradients are gathered, then pulled back through the
    noisy tokens in one pass, as before); RISE's and GAME's within 1e-6, the rounding of a forward (RISE) or
    a vectorised backward pass (GAME) over fewer rows."""
    options = QUICK.get(method, {})
    whole = ge.explain_image(tiny, PIXELS, PROMPTS, method=method, memory_budget=2 ** 40, **options)
    cut = ge.explain_image(tiny, PIXELS, PROMPTS, method=method, memory_budget=2 ** 40, **{**options, option: 1})
    assert cut.settings[option] == 1 and cut.settings["image_chunk"] == 3
    if method == "m2ib":
        assert torch.equal(cut.maps, whole.maps) and torch.equal(cut.scores, whole.scores)
    else:
        assert relative(cut.maps, whole.maps) < RELATIVE and torch.equal(cut.scores, whole.scores)


PAIRS = [("a red circle", "a blue square"), ("a green triangle", "a red circle")]


@pytest.mark.parametrize("method", ["grad_eclip", "game", "rise", "m2ib"])
@pytest.mark.parametrize("score", ["probability", "contrast"])
def test_the_smallest_chunks_keep_the_explained_score(tiny, method, score):
    """The explained score survives the chunks: the probability's softmax still runs over every prompt when
    the images, GAME's targets, RISE's masks or M2IB's noise samples are cut one at a time (each chunk sees
    every target row; only the cotangents are cut), and the contrast's pairs stay whole."""
    options = QUICK.get(method, {})
    prompts = PAIRS if score == "contrast" else PROMPTS
    count = len(prompts)
    whole = ge.explain_image(tiny, PIXELS, prompts, method=method, score=score, memory_budget=2 ** 40,
                             progress=False, **options)
    chunked = ge.explain_image(tiny, PIXELS, prompts, method=method, score=score, progress=False,
                               memory_budget=smallest(tiny, method, count, **options), **options)
    assert chunked.settings["image_chunk"] == 1 and chunked.settings["score"] == score
    if score == "probability":
        assert torch.allclose(chunked.scores.sum(dim=1), torch.ones(len(PIXELS)), atol=1e-5)
    assert relative(chunked.maps, whole.maps) < RELATIVE and relative(chunked.scores, whole.scores) < RELATIVE


@pytest.mark.parametrize("method", ["game", "m2ib"])
def test_chunks_of_columns_and_of_paired_targets_keep_the_softmax_over_every_target(tiny, method):
    """``run_image_method``'s ``columns`` (a few classes' probabilities among all the targets) and a paired
    call's targets (image b's probability among all the batch's targets) cut with the images: every chunk
    still gets every target row, so the smallest chunks give the maps of one call."""
    from gradeclip_utils.config import ExplainConfig
    from gradeclip_utils.session import run_image_method

    targets = F.normalize(torch.randn(5, tiny.adapter.embed_dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    calls = [({}, [3, 0, 3])] + ([({"paired": True}, None)] if method == "m2ib" else [])
    for extra, columns in calls:
        options = {**QUICK.get(method, {}), **extra}
        rows = targets[:len(PIXELS)] if extra else targets
        config = ExplainConfig(method=method, score="probability", options=options, memory_budget=2 ** 40)
        whole = run_image_method(tiny, config, PIXELS, rows, columns=columns)
        one = smallest(tiny, method, 1 if extra else len(columns), **options)
        chunked = run_image_method(tiny, ExplainConfig(method=method, score="probability", options=options,
                                                       memory_budget=one), PIXELS, rows, columns=columns)
        assert chunked.maps.shape == whole.maps.shape == (len(PIXELS), 1 if extra else 3, *GRID)
        # 1e-5: a probability's cotangents of five target rows round a little more than a cosine's (1e-6 measured)
        assert relative(chunked.maps, whole.maps) < 1e-5 and relative(chunked.scores, whole.scores) < RELATIVE
        if extra:  # image b's target's probability among the three targets, not among its chunk's one
            assert not torch.allclose(chunked.scores, torch.ones_like(chunked.scores))


def test_rise_draws_the_masks_it_always_drew():
    """The masks, now upsampled a few at a time, are those drawn all at once before (the same random draws)."""
    count, size, cells, p, seed = 150, (40, 56), 8, 0.5, 3
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(count, 1, cells, cells, generator=generator) < p).float()
    up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell_h, (count,), generator=generator)
    dx = torch.randint(0, cell_w, (count,), generator=generator)
    before = torch.stack([up[n, 0, int(dy[n]):int(dy[n]) + height, int(dx[n]):int(dx[n]) + width]
                          for n in range(count)]).clamp(0.0, 1.0)
    assert torch.equal(generate_masks(count, size, cells, p, seed), before)


def test_the_recorded_chunks_repeat_when_passed_back(tiny):
    small = smallest(tiny, "game") + 2 * budget.method_cost(tiny.adapter, get_spec("game"), GRID, 3, {}, [2]).unit
    first = ge.explain_image(tiny, PIXELS, PROMPTS, method="game", memory_budget=small)
    assert first.settings["image_chunk"] == 1 and first.settings["chunk"] == 3
    again = ge.explain_image(tiny, PIXELS, PROMPTS, method="game", batch_size=first.settings["image_chunk"],
                             chunk=first.settings["chunk"])  # the default budget: the same chunks, which fit it
    assert again.settings == first.settings and torch.equal(again.maps, first.maps)
    assert again.config.options == first.config.options and first.config.memory_budget == small


def test_a_budget_below_one_unit_is_refused_before_the_first_forward(tiny, monkeypatch):
    from gradeclip_utils import explain

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the budget was checked")

    monkeypatch.setattr(explain, "prompt_targets", no_work)  # the prompts' encoding: the first forward
    monkeypatch.setattr(explain, "run_image_method", no_work)
    for method, unit in [("grad_eclip", "one image"), ("game", "one image with one target per backward pass"),
                         ("rise", "one image with one mask per forward"),
                         ("m2ib", "one image with one noise sample per forward")]:
        need = smallest(tiny, method, **QUICK.get(method, {}))
        with pytest.raises(ValueError, match=f"{method}: a memory budget of {need - 1:,} bytes cannot hold {unit}, "
                                             f"which needs about {need:,} bytes"):
            ge.explain_image(tiny, PIXELS, PROMPTS, method=method, memory_budget=need - 1, **QUICK.get(method, {}))
    with pytest.raises(ValueError, match="memory_budget must be a number of bytes"):
        ge.explain_image(tiny, PIXELS, PROMPTS, memory_budget=-5)


def test_the_runner_cuts_keyed_and_paired_calls_with_their_images(tiny):
    targets = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    options = {"seed": 1, "keys": ["a", "b", "c"]}
    whole = ev.run_method(tiny, "random", PIXELS, targets, options)
    assert torch.equal(ev.run_method(tiny, "random", PIXELS, targets, {**options, "image_chunk": 1}), whole)
    paired = {"steps": 2, "samples": 2, "paired": True}
    whole = ev.run_method(tiny, "m2ib", PIXELS, targets, paired)
    cut = ev.run_method(tiny, "m2ib", PIXELS, targets, {**paired, "image_chunk": 1, "memory_budget": 2 ** 40})
    assert cut.shape == whole.shape == (3, 1, 6, 6) and relative(cut, whole) < RELATIVE


# --------------------------------------------------------------------------------- deletion, insertion
def test_perturbed_pictures_one_per_forward_give_the_curves_of_one_batch(tiny):
    from gradeclip_utils.metrics import perturbation_curves_over_ties

    maps = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(4))
    classes = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(6)), dim=-1)
    mean, std = tiny.normalization
    kwargs = dict(mean=mean, std=std, seed=[1, 2, 3], tie_seeds=[[4, 5, 6], [7, 8, 9]])
    with ge.session.explaining(tiny.model):
        whole = perturbation_curves_over_ties(tiny.adapter, PIXELS, maps, classes, [0, 3, 4], batch_size=128, **kwargs)
        one = perturbation_curves_over_ties(tiny.adapter, PIXELS, maps, classes, [0, 3, 4], batch_size=1, **kwargs)
    for a, b in zip(whole, one):
        for kind in ("deletion", "insertion"):
            for measure in ("accuracy", "score", "probability"):
                assert abs(getattr(a, kind)[measure] - getattr(b, kind)[measure]).max() < 1e-6


# ------------------------------------------------------------------------------------------ evaluation
def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


EVAL = dict(methods=["grad_eclip", "game", "rollout", "rise", "m2ib", "random"], rise_masks=12, m2ib_steps=2,
            m2ib_samples=3, tie_seeds=2, sanity_images=2, sanity_methods=["game", "m2ib"], timing_images=0,
            batch_size=4, progress=False)
ONES = {"curves": 1, "grad_eclip": {"images": 1}, "game": {"images": 1, "chunk": 1}, "rollout": {"images": 1},
        "rise": {"images": 1, "mask_chunk": 1}, "m2ib": {"images": 1, "sample_chunk": 1}, "random": {"images": 1}}


def test_the_evaluation_in_the_smallest_chunks_gives_the_values_of_one_chunk(tiny, tmp_path, monkeypatch):
    """A few scenes, every chunk cut to one (as a record passed back): the per-image CSV within the tolerance
    for another batch size (docs/reproducibility.md); the chunks are recorded in config.json, a run resumes
    with its record, and the record passed back repeats the chunks."""
    data = ev.synthetic_set(tiny, 5)
    ev.evaluate(tiny, data, tmp_path / "whole", memory_budget=2 ** 40, **EVAL)
    calls = []
    original = ev.run_method
    monkeypatch.setattr(eval_methods, "run_method", lambda *a, **k: calls.append((a[1], a[2].shape[0], a[4]))
                        or original(*a, **k))
    ev.evaluate(tiny, data, tmp_path / "ones", chunks=ONES, **EVAL)
    record = json.loads((tmp_path / "ones" / "config.json").read_text())["chunks"]
    assert {name: record[name] for name in ONES} == ONES
    whole = json.loads((tmp_path / "whole" / "config.json").read_text())["chunks"]
    assert whole["curves"] == 128 and whole["game"] == {"images": 4, "chunk": 4} and whole["m2ib"]["sample_chunk"] == 3
    # every call of the per-image phase and the sanity check got its chunks
    scored = [(name, options) for name, _, options in calls if "image_chunk" in options]
    assert {name for name, _ in scored} == set(EVAL["methods"])
    assert all(options["image_chunk"] == 1 for _, options in scored)
    assert all(options["chunk"] == 1 for name, options in scored if name == "game")
    assert_within_spread(read(tmp_path / "ones" / "per_image.csv"), read(tmp_path / "whole" / "per_image.csv"))
    # resumed with its own record (nothing to do), and its record passed back to a new run
    calls.clear()
    ev.evaluate(tiny, data, tmp_path / "ones", **EVAL)
    assert [c for c in calls if "image_chunk" in c[2]] == []
    ev.evaluate(tiny, data, tmp_path / "again", chunks=record, **EVAL)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["chunks"] == record
    assert read(tmp_path / "again" / "per_image.csv") == read(tmp_path / "ones" / "per_image.csv")


def test_the_evaluation_plans_from_its_budget_and_refuses_one_too_small_before_any_image(tiny, tmp_path,
                                                                                       monkeypatch):
    data = ev.synthetic_set(tiny, 3)
    settings = {**EVAL, "methods": ["game"], "sanity_images": 0, "sanity_methods": []}
    # a call of a batch (4 images) against its distinct targets (at most 4)
    game = budget.method_cost(tiny.adapter, get_spec("game"), GRID, 4, {}, [2])
    ev.evaluate(tiny, data, tmp_path / "small", memory_budget=game.total(2, 2), **settings)
    chunks = json.loads((tmp_path / "small" / "config.json").read_text())["chunks"]
    assert chunks["game"] == {"images": 1, "chunk": 4}  # the 4 targets fit one image, not two images with 2 each

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the budget was checked")

    monkeypatch.setattr(eval_methods, "unsupported_methods", no_work)  # the support probes run the model
    monkeypatch.setattr(eval_methods, "batch_maps", no_work)
    with pytest.raises(ValueError, match=r"deletion and insertion: a memory budget of 1,000 bytes cannot hold one "
                                         r"perturbed picture, which needs about [\d,]+ bytes"):
        ev.evaluate(tiny, data, tmp_path / "tiny", memory_budget=1000, **settings)
    with pytest.raises(ValueError, match=r"game: a memory budget of 1,000 bytes cannot hold one image with one target "
                                         r"per backward pass, which needs about [\d,]+ bytes"):
        ev.evaluate(tiny, data, tmp_path / "tiny", memory_budget=1000, **{**settings, "faithfulness": False})
    assert not (tmp_path / "tiny" / "config.json").exists()
    with pytest.raises(ValueError, match="memory_budget must be a number of bytes"):
        ev.EvalConfig(memory_budget=1.5)
    with pytest.raises(ValueError, match=r"chunks\['game'\]\['chunk'\] must be at least 1"):
        ev.EvalConfig(chunks={"game": {"chunk": 0}})


# ------------------------------------------------------------------------------------- the commands
def test_the_commands_take_a_memory_budget_with_a_suffix():
    parser = cli.build_parser()
    for command in (["explain", "x.png", "a dog"], ["explain-dataset", "pictures", "--classes", "--out", "o"],
                    ["evaluate"]):
        assert parser.parse_args([*command, "--memory-budget", "512M"]).memory_budget == 512 * 2 ** 20
        assert parser.parse_args(command).memory_budget is None
    args = parser.parse_args(["evaluate", "--memory-budget", "2G"])
    config = ev.command.config_from_args(parser.commands["evaluate"], args, [], torch.device("cpu"))
    assert config.memory_budget == 2 * 2 ** 30
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--memory-budget", "lots"])


def test_the_dataset_job_passes_its_budget_to_the_runner(tiny, tmp_path):
    from PIL import Image

    from gradeclip_utils.explain_dataset import explain_dataset

    (tmp_path / "pictures").mkdir()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "pictures" / "red.png")
    with pytest.raises(ValueError, match="grad_eclip: a memory budget of 10 bytes cannot hold one image"):
        explain_dataset(tiny, tmp_path / "pictures", tmp_path / "out", prompts=PROMPTS, memory_budget=10,
                        progress=False)
