"""Training: the loss, a few steps that reduce it, checkpoints, resume and export."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradeclip_utils.cli import alias_main
from gradeclip_utils.synthetic.config import CONFIG_NAME, OPEN_CLIP_CONFIG, WEIGHTS_NAME, build_model
from gradeclip_utils.synthetic.dataset import HELDOUT_SEED_START, SyntheticBatches, images_to_tensor
from gradeclip_utils.synthetic.train import _tokenizer, contrastive_loss, encode_text_trimmed, train


def test_contrastive_loss_multi_positive():
    f = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(100.0)
    eye = torch.eye(4, dtype=torch.bool)
    assert float(contrastive_loss(f, f, eye, scale)) < 1e-3
    # two scenes with the same caption: both texts are positives of both images; identical features
    # then reach the loss's floor (the targets' entropy: log 2 on 2 of the 4 rows, both directions)
    g = f.clone(); g[1] = g[0]
    truth = eye.clone(); truth[0, 1] = truth[1, 0] = True
    assert float(contrastive_loss(g, g, truth, scale)) == pytest.approx(np.log(2) / 2, abs=1e-3)
    # ... while pulling the duplicates apart is penalised
    h = g.clone(); h[1] = F.normalize(g[1] + 0.5 * f[1], dim=-1)
    assert float(contrastive_loss(h, h, truth, scale)) > float(contrastive_loss(g, g, truth, scale)) + 0.1
    # extra negative texts only enter the image->text direction
    extra = torch.cat([f, -f])
    assert float(contrastive_loss(f, extra, torch.cat([eye, torch.zeros(4, 4, dtype=torch.bool)], 1),
                                  scale)) < 1e-3


def test_trimmed_text_encoding_equals_open_clip():
    torch.manual_seed(0)
    model = build_model().eval()
    texts = ["a red circle", "two small blue crosses", "a red circle, a blue square, two green stars, a white "
             "cross and an orange triangle", "a star left of a square", "a shape"]
    tokens = _tokenizer(OPEN_CLIP_CONFIG)(texts)
    with torch.no_grad():
        ref = model.encode_text(tokens)
        fast = encode_text_trimmed(model, tokens)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    # gradients flow as through the full computation
    fast = encode_text_trimmed(model, tokens)
    fast.sum().backward()
    assert model.token_embedding.weight.grad is not None


def test_batches_are_deterministic_and_below_heldout():
    a, b = SyntheticBatches(2, 6)[1], SyntheticBatches(2, 6)[1]
    assert torch.equal(a["images"], b["images"]) and a["texts"] == b["texts"]
    assert a["images"].shape == (6, 3, 64, 64) and a["images"].dtype == torch.uint8
    assert len(a["texts"]) == 18 and a["truth"].shape == (6, 18)
    assert bool(a["truth"][torch.arange(6), torch.arange(6)].all())
    # negative slots hold false captions (or the scene's own caption when it has no more negatives)
    for k in (1, 2):
        for b in range(6):
            assert bool(a["truth"][b, 6 * k + b]) == (a["texts"][6 * k + b] == a["texts"][b])
    with pytest.raises(ValueError):
        SyntheticBatches(10, 100, start=HELDOUT_SEED_START - 500)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model()
    tok = _tokenizer(OPEN_CLIP_CONFIG)
    mean, std = OPEN_CLIP_CONFIG["preprocess_cfg"]["mean"], OPEN_CLIP_CONFIG["preprocess_cfg"]["std"]
    batch = SyntheticBatches(1, 24)[0]
    x = images_to_tensor(batch["images"].permute(0, 2, 3, 1).numpy(), mean, std)
    tokens = tok(batch["texts"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_fn():
        return contrastive_loss(F.normalize(model.encode_image(x), dim=-1),
                                F.normalize(model.encode_text(tokens), dim=-1), batch["truth"],
                                model.logit_scale.exp())

    losses = []
    for _ in range(6):
        loss = loss_fn()
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = float(loss_fn())
    assert final < losses[0] - 0.2, (losses, final)


def test_train_checkpoint_resume_export(tmp_path):
    import open_clip

    out = tmp_path / "run"
    s1 = train(out, steps=3, batch_size=8, warmup=1, workers=0, eval_every=0, progress=False,
               max_minutes=0.0)    # stops after the first step, with a checkpoint
    assert s1["steps_done"] == 1 and (out / "checkpoint.pt").exists() and not (out / "model").exists()
    s_at = train(tmp_path / "stop", steps=3, batch_size=8, warmup=1, workers=0, eval_every=0, progress=False,
                 stop_at=2)   # stops after step 2, with a checkpoint at step 2
    assert s_at["steps_done"] == 2 and not (tmp_path / "stop" / "model").exists()
    assert torch.load(tmp_path / "stop" / "checkpoint.pt", weights_only=True)["step"] == 2
    s2 = train(out, steps=3, batch_size=8, warmup=1, workers=0, eval_every=0, progress=False, resume=True,
               export=str(tmp_path / "export"))
    assert s2["steps_done"] == 3
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3"]
    for folder in (out / "model", tmp_path / "export"):
        assert json.loads((folder / CONFIG_NAME).read_text()) == OPEN_CLIP_CONFIG
        assert (folder / WEIGHTS_NAME).exists()
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ck["model"][k].half().float())


def test_other_config_and_snapshots_and_selection(tmp_path, monkeypatch, capsys):
    import copy

    import open_clip

    from gradeclip_utils.synthetic import evaluate as ev

    config = copy.deepcopy(OPEN_CLIP_CONFIG)
    config["model_cfg"]["vision_cfg"]["layers"] = 2
    out = tmp_path / "run"
    summary = train(out, steps=4, batch_size=8, warmup=1, workers=0, eval_every=0, progress=False,
                    config=config, snapshot_every=2)
    assert summary["args"]["config"] == config
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == ["step_2", "step_4"]
    for folder in [out / "model", *(out / "snapshots").iterdir()]:
        assert json.loads((folder / CONFIG_NAME).read_text()) == config
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out / 'snapshots' / 'step_4'}")
    assert len(model.visual.transformer.resblocks) == 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"] == config

    # selection: the highest pointing game among snapshots above the zero-shot floor, on its own range
    scores = {"step_2": (0.97, 0.80), "step_4": (0.90, 0.95)}
    seen_offsets = set()

    def fake_zero_shot(model, n, offset):
        seen_offsets.add(offset)
        return {"top1": scores[model.name.split("/")[-1]][0]}

    def fake_localisation(model, n, offset):
        seen_offsets.add(offset)
        return {"pointing": scores[model.name.split("/")[-1]][1], "energy": 0.3}

    monkeypatch.setattr(ev, "zero_shot_eval", fake_zero_shot)
    monkeypatch.setattr(ev, "localisation_eval", fake_localisation)
    best, rows = ev.select_snapshot(out / "snapshots", min_zero_shot=0.95, progress=False)
    assert best is not None and best.name == "step_2" and [r["step"] for r in rows] == [2, 4]
    assert seen_offsets == {ev.OFFSETS["select_zero_shot"], ev.OFFSETS["select_localisation"]}
    assert seen_offsets.isdisjoint({v for k, v in ev.OFFSETS.items() if not k.startswith("select")})
    best, _ = ev.select_snapshot(out / "snapshots", min_zero_shot=0.99, progress=False)
    assert best is None

    # the command prints the rows and copies the selected model (config and weights) where it is told
    exported = tmp_path / "exported"
    alias_main("synthetic evaluate", ["--select", str(out / "snapshots"), "--export", str(exported), "--threads", "1"])
    assert "step_2" in capsys.readouterr().out.splitlines()[-2]
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (exported / name).read_bytes() == (out / "snapshots" / "step_2" / name).read_bytes()
    with pytest.raises(SystemExit):
        alias_main("synthetic evaluate", ["--export", str(exported)])
    with pytest.raises(SystemExit):
        alias_main("synthetic evaluate", ["--select", str(out / "snapshots"), "--min-zero-shot", "0.99",
                                          "--export", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_command_line_tower_and_mix_overrides(tmp_path, capsys):
    """``--vision KEY=VALUE`` reaches the open_clip config (and the exported model), ``--mix`` the data
    stream; bad values stop the command before any training."""
    import open_clip

    from gradeclip_utils.synthetic.dataset import TRAIN_MIX

    out = tmp_path / "run"
    alias_main("synthetic train", [
        "--out", str(out), "--steps", "2", "--batch-size", "8", "--warmup", "1", "--workers", "0",
        "--eval-every", "0", "--no-progress", "--vision", "ls_init_value=0.1", "--vision", "layers=2",
        "--mix", "single=1", "--mix", "partial=0", "--mix", "full=0", "--mix", "pair=0", "--mix", "count=0",
        "--mix", "relation=0"])
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    vision = ck["config"]["model_cfg"]["vision_cfg"]
    assert vision["ls_init_value"] == 0.1 and vision["layers"] == 2
    assert ck["args"]["mix"] == {k: (1.0 if k == "single" else 0.0) for k in TRAIN_MIX}
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out / 'model'}")
    blocks = model.visual.transformer.resblocks
    assert len(blocks) == 2 and hasattr(blocks[0].ls_1, "gamma")

    # the mix reaches the batches: an all-"single" stream has one object per scene
    from gradeclip_utils.synthetic.dataset import make_example
    assert all(len(make_example(i, ck["args"]["mix"]).scene.objects) == 1 for i in range(20))

    for bad in (["--vision", "no_such_key=1"], ["--vision", "layers"], ["--vision", "layers=[oops"],
                ["--mix", "no_such_kind=0.5"], ["--mix", "single=-1"], ["--mix", "single=nan"],
                ["--mix", "single=x"]):
        with pytest.raises(SystemExit):
            alias_main("synthetic train", ["--out", str(tmp_path / "bad"), "--steps", "1", "--workers", "0", *bad])
        assert not (tmp_path / "bad" / "checkpoint.pt").exists()
    assert "--vision" in capsys.readouterr().err
