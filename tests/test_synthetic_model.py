"""The committed synthetic CLIP: loads offline, matches its config, and still works.

The last tests guard against a broken model or a broken explanation on fresh held-out scenes; the
issue's targets for this set are checked separately: >= 90% zero-shot colour x shape accuracy (met),
Grad-ECLIP pointing game >= 75% (not met by the committed model: an expected failure, see the marker).
"""

import json

import numpy as np
import pytest
import torch

from gradeclip_utils.synthetic.config import CONFIG_NAME, DATA_DIR, OPEN_CLIP_CONFIG, WEIGHTS_NAME
from gradeclip_utils.synthetic.dataset import HELDOUT_SEED_START, images_to_tensor
from gradeclip_utils.synthetic.scenes import generate_scene


@pytest.fixture(scope="module")
def loaded():
    from gradeclip_utils import load_model

    torch.set_num_threads(2)
    return load_model(device="cpu")


def test_files_and_size():
    files = [DATA_DIR / CONFIG_NAME, DATA_DIR / WEIGHTS_NAME, DATA_DIR / "MODEL_CARD.md"]
    assert all(f.is_file() for f in files)
    total = sum(f.stat().st_size for f in DATA_DIR.iterdir() if f.is_file())
    assert total <= 20 * 1024 * 1024
    assert json.loads((DATA_DIR / CONFIG_NAME).read_text()) == OPEN_CLIP_CONFIG


def test_weights_match_config_through_open_clip():
    import open_clip
    from safetensors.torch import load_file

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{DATA_DIR}")
    state = load_file(str(DATA_DIR / WEIGHTS_NAME))
    own = model.state_dict()
    assert set(state) == set(own)   # strict: nothing missing, nothing extra
    for k, v in state.items():
        assert tuple(v.shape) == tuple(own[k].shape), k
    cfg = OPEN_CLIP_CONFIG["model_cfg"]
    v = model.visual
    assert v.grid_size == (8, 8) and v.pool_type == "tok" and v.attn_pool is None
    assert v.class_embedding.shape == (cfg["vision_cfg"]["width"],)
    assert len(v.transformer.resblocks) == cfg["vision_cfg"]["layers"]
    assert model.context_length == cfg["text_cfg"]["context_length"]
    assert model.token_embedding.num_embeddings == 49408
    tok = open_clip.get_tokenizer(f"local-dir:{DATA_DIR}")
    assert type(tok).__name__ == "SimpleTokenizer" and tok.context_length == 32


def test_load_model_default_is_synthetic(loaded):
    assert loaded.name == "synthetic" and not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    # the model's own preprocessing keeps a scene exactly (resize and crop are the identity)
    s = generate_scene(123)
    mean, std = OPEN_CLIP_CONFIG["preprocess_cfg"]["mean"], OPEN_CLIP_CONFIG["preprocess_cfg"]["std"]
    torch.testing.assert_close(loaded.preprocess(s.image)[None], images_to_tensor([s.image], mean, std),
                               atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def ci_scores(loaded):
    from gradeclip_utils.synthetic.evaluate import OFFSETS, localisation_eval, zero_shot_eval

    return (zero_shot_eval(loaded, n=140, offset=OFFSETS["ci_zero_shot"]),
            localisation_eval(loaded, n=60, offset=OFFSETS["ci_localisation"]))


def test_committed_model_is_not_broken(ci_scores):
    """Regression guard on a fixed fresh held-out set (140 single-object scenes, 60 scenes of 2-4
    objects): a broken model (chance is 2.9%) or a broken explanation fails here. The floors sit below
    what the committed model measures on this set (100.0% zero-shot, 78.3% pointing game, energy 35.8%
    against a mask area share of 4.4%)."""
    zs, loc = ci_scores
    assert zs["top1"] >= 0.95, zs
    assert zs["colour"] >= 0.95, zs
    assert loc["pointing"] >= 0.60, loc
    assert loc["energy"] > loc["area_share"] + 0.15, loc


def test_committed_model_meets_zero_shot_target(ci_scores):
    """Issue 3's CI target for zero-shot colour x shape accuracy (>= 90% on this set)."""
    zs, _ = ci_scores
    assert zs["top1"] >= 0.90, zs


def test_committed_model_meets_pointing_target(ci_scores):
    """Issue 3's CI target for the Grad-ECLIP pointing game with the last block (>= 75% on this set)."""
    _, loc = ci_scores
    assert loc["pointing"] >= 0.75, loc


def test_evaluate_command_prints_the_table_and_writes_json(tmp_path, capsys):
    from gradeclip_utils.synthetic.evaluate import main

    out = tmp_path / "res.json"
    main(["--n-zero-shot", "14", "--n-choice", "4", "--n-localisation", "6", "--layers", "-2", "-1",
          "--threads", "1", "--json", str(out)])
    table = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["localisation"]["layers"] == [-2, -1] and res["localisation"]["n"] == 6
    assert "blocks -2, -1 summed" in table
    assert f"{res['zero_shot']['top1']:.1%}" in table.splitlines()[2]
    for kind, v in res["choice"].items():
        assert v["n"] == 4 and 0.0 <= v["accuracy"] <= 1.0 and f"caption choice: {kind}" in table
    misses = res["localisation"]["misses"]
    assert sum(misses.values()) == pytest.approx(1.0 - res["localisation"]["pointing"])
    assert all(f"pointing misses: peak on {kind}" in table for kind in misses)


def test_miss_breakdown_places_each_peak():
    """Hand-made maps peaking on the prompted object, on a look-alike (same colour), on an unrelated object
    and on the background: one hit and one miss of each kind."""
    from gradeclip_utils.metrics import pointing_game
    from gradeclip_utils.synthetic.captions import object_caption
    from gradeclip_utils.synthetic.evaluate import MISS_KINDS, miss_breakdown

    scene = generate_scene(HELDOUT_SEED_START + 17, objects=[{"colour": "red", "shape": "circle"},
                                                               {"colour": "red", "shape": "square"},
                                                               {"colour": "blue", "shape": "star"}],
                           with_captions=False)
    caption = object_caption(scene.objects, 0)
    background = ~scene.masks.any(0)
    peaks = [np.argwhere(scene.masks[0])[0], np.argwhere(scene.masks[1])[0], np.argwhere(scene.masks[2])[0],
             np.argwhere(background)[0]]
    maps = torch.zeros(4, *scene.masks.shape[1:])
    for k, (y, x) in enumerate(peaks):
        maps[k, y, x] = 1.0
    items = [(scene, caption, scene.masks[0])] * 4
    hits = pointing_game(maps, np.stack([m for _, _, m in items]))
    assert hits.tolist() == [True, False, False, False]
    shares = miss_breakdown(maps, items, hits)
    assert list(shares) == list(MISS_KINDS)
    assert shares == {"look-alike object": 0.25, "other object": 0.25, "background": 0.25}
    assert miss_breakdown(maps[:1], items[:1], hits[:1]) == dict.fromkeys(MISS_KINDS, 0.0)
