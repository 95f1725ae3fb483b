"""The one safe runner of a method (``session.run_image_method`` / ``run_text_method``): the model's state is
restored, results come back detached on the CPU and checked to be finite, refusals and runtime errors get
today's messages; and every caller (explain_image, explain_text, the evaluation, the dataset job, the
benchmark) runs methods through it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils import evaluation as ev
from gradeclip_utils.adapters import UnsupportedMethodError
from gradeclip_utils.config import ExplainConfig
from gradeclip_utils.explain_dataset import explain_dataset
from gradeclip_utils.methods import MapOutput, MethodSpec, TokenOutput, cosine_scores, register, unregister
from gradeclip_utils.session import explaining, model_lock, run_image_method, run_text_method

PIXELS = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(7))
PROMPTS = ["a red circle", "a blue square"]


def state_of(model):
    return ([m.training for m in model.modules()], [(p.grad, None if p.grad is None else p.grad.clone())
                                                     for p in model.parameters()])


def same_state(before, after):
    assert before[0] == after[0]
    for (grad, values), (now, now_values) in zip(before[1], after[1]):
        assert now is grad and (values is None or torch.equal(values, now_values))


@pytest.fixture()
def trained(tiny):
    """A copy of the tiny model mid-training: train mode, gradients held."""
    loaded = ge.wrap_model(copy.deepcopy(tiny.model), tiny.preprocess, tiny.tokenizer, name="tiny-trained")
    loaded.model.train()
    for p in loaded.model.parameters():
        p.grad = torch.full_like(p, 0.5)
    return loaded


def test_the_runner_restores_the_model_and_returns_cpu_float32(tiny, trained):
    targets = ge.encode_texts(trained, PROMPTS)
    before = state_of(trained.model)
    out = run_image_method(trained, ExplainConfig(layers=(0, 2)), PIXELS, targets)
    same_state(before, state_of(trained.model))
    assert trained.model.training
    assert isinstance(out, MapOutput) and out.maps.device.type == "cpu" and out.maps.dtype == torch.float32
    assert not out.maps.requires_grad and not out.scores.requires_grad
    want = ge.explain_image(tiny, PIXELS, targets, layers=(0, 2))
    assert torch.allclose(out.maps, want.maps, atol=1e-6) and torch.allclose(out.scores, want.scores, atol=1e-6)
    text = run_text_method(trained, ExplainConfig(layers=2), trained.tokenize(PROMPTS), targets[:1])
    same_state(before, state_of(trained.model))
    assert isinstance(text, TokenOutput) and text.relevance.device.type == "cpu"
    with explaining(trained.model):  # a caller may hold the state around several batches (re-entrant)
        again = run_image_method(trained, ExplainConfig(layers=(0, 2)), PIXELS, targets)
        assert not trained.model.training
    assert torch.equal(again.maps, out.maps)
    same_state(before, state_of(trained.model))


def recording_maps(adapter, pixels, targets, *, seen=None, value: float = 1.0, **_):
    """Records the state the method runs in; maps of ``value``."""
    model = adapter.model
    seen.append({"eval": not any(m.training for m in model.modules()), "grad": torch.is_grad_enabled(),
                 "locked": model_lock(model)._is_owned()})
    ph, pw = adapter.patch_size
    with torch.no_grad():
        scores = cosine_scores(adapter.encode_image(pixels), targets)
    maps = torch.full((pixels.shape[0], targets.shape[0], pixels.shape[-2] // ph, pixels.shape[-1] // pw), value)
    return MapOutput(maps=maps, scores=scores * value)


def recording_tokens(adapter, tokens, targets, *, seen=None, value: float = 1.0, **_):
    seen.append({"eval": not any(m.training for m in adapter.model.modules()), "grad": torch.is_grad_enabled(),
                 "locked": model_lock(adapter.model)._is_owned()})
    relevance = torch.full((targets.shape[0], tokens.shape[0], tokens.shape[1]), value)
    return TokenOutput(relevance=relevance, scores=torch.zeros(targets.shape[0], tokens.shape[0]))


@pytest.fixture()
def recording():
    register(MethodSpec(name="recording_test", image=recording_maps, text=recording_tokens,
                        options={"seen": None, "value": 1.0}))
    yield
    unregister("recording_test")


def picture_folder(root):
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    return root


def test_every_caller_runs_methods_through_the_runner(trained, recording):
    """In explaining (eval mode, gradients on, the model's lock held) and with the finite check, whoever calls."""
    seen = []
    ge.explain_image(trained, PIXELS, PROMPTS, method="recording_test", seen=seen)
    ge.explain_text(trained, PIXELS[:1], PROMPTS, method="recording_test", seen=seen)
    ev.run_method(trained, "recording_test", PIXELS, ge.encode_texts(trained, PROMPTS), {"seen": seen})
    assert len(seen) == 3 and all(s == {"eval": True, "grad": True, "locked": True} for s in seen)
    assert trained.model.training  # restored after each

    nan = {"value": float("nan")}
    with pytest.raises(FloatingPointError, match=r"recording_test produced non-finite maps or scores for "
                                                 r"\['tensor\[0\]', 'tensor\[1\]'\] \(are the model's weights"):
        ge.explain_image(trained, PIXELS, PROMPTS, method="recording_test", seen=[], **nan)
    with pytest.raises(FloatingPointError, match="recording_test produced non-finite relevance or scores"):
        ge.explain_text(trained, PIXELS[:1], PROMPTS, method="recording_test", seen=[], **nan)
    with pytest.raises(FloatingPointError, match="recording_test produced non-finite maps or scores"):
        ev.run_method(trained, "recording_test", PIXELS, ge.encode_texts(trained, PROMPTS), {"seen": [], **nan})
    assert trained.model.training


def test_the_dataset_job_runs_through_the_runner(tiny, tmp_path, monkeypatch):
    import gradeclip_utils.explain_dataset as job
    import gradeclip_utils.session as session

    assert job.run_image_method is session.run_image_method
    calls = []
    real = session.run_image_method

    def counting(model, config, pixels, targets, **kwargs):
        calls.append((config.method, tuple(config.layers), kwargs.get("inputs")))
        return real(model, config, pixels, targets, **kwargs)

    monkeypatch.setattr(job, "run_image_method", counting)
    folder = picture_folder(tmp_path / "pictures")
    explain_dataset(tiny, folder, tmp_path / "maps", prompts=PROMPTS, progress=False)
    assert calls == [("grad_eclip", (2,), ["im0.png", "im1.png"])]

    def broken(*args, **kwargs):
        raise FloatingPointError("grad_eclip produced non-finite maps or scores for ['im0.png']")

    monkeypatch.setattr(job, "run_image_method", broken)
    with pytest.raises(FloatingPointError, match="non-finite"):
        explain_dataset(tiny, folder, tmp_path / "other", prompts=PROMPTS, progress=False)


def test_runtime_refusals_and_missing_half_kernels_keep_their_messages(tiny):
    def refusing(adapter, pixels, targets, **_):
        raise UnsupportedMethodError("the tower cannot do that today")

    def half_kernel(adapter, pixels, targets, **_):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")

    register(MethodSpec(name="refusing_test", image=refusing))
    register(MethodSpec(name="half_test", image=half_kernel))
    try:
        targets = ge.encode_texts(tiny, PROMPTS)
        with pytest.raises(UnsupportedMethodError, match=r"^refusing_test is not available for open_clip ViT models: "
                                                         r"the tower cannot do that today$"):
            run_image_method(tiny, ExplainConfig(method="refusing_test"), PIXELS, targets)
        half = ge.wrap_model(copy.deepcopy(tiny.model).half(), tiny.preprocess, tiny.tokenizer)
        with pytest.raises(RuntimeError, match=r"half_test failed on a half-precision \(fp16\) model on the CPU"):
            run_image_method(half, ExplainConfig(method="half_test"), PIXELS, targets)
        with pytest.raises(RuntimeError, match="^\"addmm_impl_cpu_\" not implemented"):  # fp32: as it is
            run_image_method(tiny, ExplainConfig(method="half_test"), PIXELS, targets)
        with pytest.raises(ValueError, match="unknown image method 'nope'"):
            run_image_method(tiny, ExplainConfig(method="nope"), PIXELS, targets)
    finally:
        unregister("refusing_test")
        unregister("half_test")


def test_the_evaluations_own_reference_runs_through_the_runner(tiny):
    """The random reference is not a registered method: the evaluation hands the runner its spec."""
    assert "random" not in ge.list_methods()["image"]
    targets = ge.encode_texts(tiny, PROMPTS)
    maps = ev.run_method(tiny, "random", PIXELS, targets, {"seed": 1, "keys": ["a", "b"]})
    assert maps.shape == (2, 2, 6, 6) and maps.device.type == "cpu"
    assert torch.equal(maps, ev.random_maps(tiny.adapter, PIXELS, targets, seed=1, keys=["a", "b"]).maps)


def test_the_benchmark_runs_the_baselines_through_the_runner_with_their_declared_options(monkeypatch, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    import gradeclip_utils.session as session

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("benchmark_speed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    calls = []
    real = session.run_image_method

    def counting(model, config, pixels, targets, **kwargs):
        calls.append(config)
        return real(model, config, pixels, targets, **kwargs)

    monkeypatch.setattr(session, "run_image_method", counting)
    assert module.main(["--model", "tiny", "--prompts", "1", "--repeats", "1", "--skip", "loop,text,perturbation",
                        "--memory-calls", "0", "--baselines", "rise,clip_surgery,rollout", "--rise-masks", "5"]) == 0
    configs = {config.method: config for config in calls}
    assert set(configs) == {"rise", "clip_surgery", "rollout"}
    assert configs["rise"].options == {"masks": 5} and configs["rollout"].options == {}
    assert configs["clip_surgery"].options["surgery_targets"].shape[0] == 80
    printed = capsys.readouterr().out
    assert "5 masks" in printed and "a class set of 80 embeddings" in printed
