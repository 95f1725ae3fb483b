"""Nothing left behind: hooks, gradients, graphs and flags after success and after exceptions; flat
memory over many calls; deterministic results; serialised calls from several threads."""

from __future__ import annotations

import gc
import os
import resource
import threading
import weakref

import pytest
import torch

import gradeclip_utils as ge
from gradeclip_utils.adapters import CLIPAdapter
from gradeclip_utils.methods import IMAGE_METHODS, TEXT_METHODS, grad_eclip
from support.blip import match_head_methods

PROMPTS = ["a red circle", "two blue squares", "a photo"]
PIXELS = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
              "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def model_state(model):
    """Everything an explanation could leave on a model, by value."""
    hooks = [(name, key, tuple(getattr(module, key, {}).keys()))
             for name, module in model.named_modules() for key in HOOK_DICTS]
    params = [(name, p.requires_grad, None if p.grad is None else p.grad.clone(), p._backward_hooks)
              for name, p in model.named_parameters()]
    return hooks, [(n, m.training) for n, m in model.named_modules()], params


def graph_tensors():
    """Live tensors attached to an autograd graph (with a grad_fn), after a full collection."""
    gc.collect()
    found = 0
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.grad_fn is not None:  # type(): no __class__ lookups
            found += 1
    return found


def same_state(a, b):
    hooks_a, flags_a, params_a = a
    hooks_b, flags_b, params_b = b
    assert hooks_a == hooks_b and flags_a == flags_b
    for (name, rg, grad, hooks), (name2, rg2, grad2, hooks2) in zip(params_a, params_b):
        assert (name, rg, hooks) == (name2, rg2, hooks2)
        assert (grad is None and grad2 is None) or torch.equal(grad, grad2)


def test_user_hooks_stay_and_none_are_added(tiny):
    calls = []
    handle = tiny.model.visual.ln_post.register_forward_hook(lambda *args: calls.append(1))
    try:
        before = model_state(tiny.model)
        ge.explain_image(tiny, PIXELS, PROMPTS)
        ge.explain_text(tiny, PIXELS, PROMPTS)
        same_state(before, model_state(tiny.model))
        assert calls, "the model's own modules run, so the user's hook fires"
    finally:
        handle.remove()


@pytest.fixture()
def graph_watch(monkeypatch):
    """Weak references to every embedding the adapter traces (the root of each autograd graph)."""
    roots: list[weakref.ref] = []
    for name in ("trace_image", "trace_text"):
        original = getattr(CLIPAdapter, name)

        def traced(self, *args, _original=original, **kwargs):
            trace = _original(self, *args, **kwargs)
            roots.append(weakref.ref(trace.embedding))
            return trace

        monkeypatch.setattr(CLIPAdapter, name, traced)
    return roots


def test_no_graph_is_left_after_success(tiny, graph_watch):
    ge.explain_image(tiny, PIXELS, PROMPTS)  # warm-up: caches, lazy imports
    baseline, before = graph_tensors(), model_state(tiny.model)
    image = ge.explain_image(tiny, PIXELS, PROMPTS, layers=(0, 2))
    text = ge.explain_text(tiny, PIXELS, PROMPTS)
    gc.collect()
    assert len(graph_watch) >= 2 and all(ref() is None for ref in graph_watch), "a traced graph is still alive"
    assert graph_tensors() == baseline
    same_state(before, model_state(tiny.model))
    for tensor in [*image.raw, image.scores, text.token_importance, text.word_importance, text.scores]:
        assert tensor.grad_fn is None and not tensor.requires_grad


def raise_inside(where):
    """A replacement for a grad_eclip helper that raises while the graph is alive in its frame."""
    def broken(trace, *args, **kwargs):
        embedding = trace.embedding  # noqa: F841  (held by this frame, as a real failure would)
        raise RuntimeError(f"boom in {where}")
    return broken


@pytest.mark.parametrize("tower", ["image", "text"])
def test_no_graph_hook_or_flag_is_left_after_an_exception(tiny, graph_watch, monkeypatch, tower):
    """A failure midway (while the graph exists) leaves nothing behind, even while the exception is
    still held, as a notebook holds its last traceback."""
    ge.explain_image(tiny, PIXELS, PROMPTS)
    baseline = graph_tensors()
    graph_watch.clear()
    model = tiny.model
    model.train()
    model.visual.requires_grad_(False)
    try:
        before = model_state(model)
        monkeypatch.setattr(grad_eclip, "channel_weights", raise_inside("channel_weights"))
        with pytest.raises(RuntimeError, match="boom in channel_weights") as error:
            if tower == "image":
                ge.explain_image(tiny, PIXELS, PROMPTS)
            else:
                ge.explain_text(tiny, PIXELS, PROMPTS)
        assert error.value.__traceback__ is not None  # the exception and its traceback are still held here
        assert graph_watch
        gc.collect()
        assert all(ref() is None for ref in graph_watch), "the failed explanation's graph is kept alive"
        assert graph_tensors() == baseline
        same_state(before, model_state(model))
        assert model.training and not model.visual.proj.requires_grad
    finally:
        model.eval()
        model.requires_grad_(True)


def test_keyboard_interrupt_restores_the_model(tiny, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    before = model_state(tiny.model)
    monkeypatch.setitem(IMAGE_METHODS, "grad_eclip", interrupted)
    monkeypatch.setitem(TEXT_METHODS, "grad_eclip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ge.explain_image(tiny, PIXELS, PROMPTS)
    with pytest.raises(KeyboardInterrupt):
        ge.explain_text(tiny, PIXELS, PROMPTS)
    same_state(before, model_state(tiny.model))


def test_results_are_deterministic(tiny):
    first = ge.explain_image(tiny, PIXELS, PROMPTS, layers=(0, 2))
    ge.explain_image(tiny, torch.randn(1, 3, 32, 64), ["something else"])  # unrelated work in between
    second = ge.explain_image(tiny, PIXELS, PROMPTS, layers=(0, 2))
    assert torch.equal(first.maps, second.maps) and torch.equal(first.scores, second.scores)
    text_a = ge.explain_text(tiny, PIXELS, PROMPTS)
    text_b = ge.explain_text(tiny, PIXELS, PROMPTS)
    assert torch.equal(text_a.token_importance, text_b.token_importance)
    assert torch.equal(text_a.scores, text_b.scores)


def resident_bytes() -> int:
    """Current resident memory of this process (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def test_memory_is_flat_over_a_thousand_calls():
    """1,000 explanations on a small model: no tensor accumulates and resident memory stays flat.

    A leak of one graph per call would cost several MB per 100 calls here; the bound leaves room for
    allocator noise only.
    """
    from conftest import make_tiny_clip

    small = make_tiny_clip(image_size=(16, 16), width=32, heads=2, layers=2, text_width=32, text_heads=2,
                           text_layers=2, embed_dim=16, seed=4)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a star"]
    for _ in range(50):  # warm-up: allocator pools, lazy imports, caches
        ge.explain_image(small, pixels, prompts)
        ge.explain_text(small, pixels, prompts[:1])
    tensors, rss = live_tensors(), resident_bytes()
    for call in range(1000):
        if call % 4:
            ge.explain_image(small, pixels, prompts)
        else:
            ge.explain_text(small, pixels, prompts[:1])
    grown = resident_bytes() - rss
    print(f"resident memory change over 1,000 calls: {grown / 2**20:+.2f} MiB; live tensors {tensors} -> "
          f"{live_tensors()}")
    assert live_tensors() <= tensors
    assert grown < 24 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 1,000 calls"


def test_concurrent_calls_on_one_model_are_serialised_and_correct():
    """Threads explaining one model (in train mode, with patch dropout) all get the eval-mode result,
    and the model's flags come back as they were."""
    from robustness.test_robustness_models import patch_dropout_clip  # by its folder: any collection order

    loaded = patch_dropout_clip()
    pixels = PIXELS[:1, :, :32, :32]
    expected = ge.explain_image(loaded, pixels, PROMPTS)
    loaded.model.train()
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def work(index):
        try:
            barrier.wait()
            for round_ in range(5):
                results[index, round_] = ge.explain_image(loaded, pixels, PROMPTS).maps
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 20
    assert all(torch.equal(maps, expected.maps) for maps in results.values())
    assert all(m.training for m in loaded.model.modules())


def _leaves_nothing_and_repeats_exactly(loaded, pixels, method, frozen, **options):
    """``method`` on ``loaded`` in train mode with the module ``frozen`` frozen: finite maps, the same maps
    twice, and the model exactly as it was, with no graph alive."""
    ge.explain_image(loaded, pixels, PROMPTS[:2], method=method, **options)  # warm-up
    baseline = graph_tensors()
    model = loaded.model
    model.train()
    frozen.requires_grad_(False)
    try:
        before = model_state(model)
        first = ge.explain_image(loaded, pixels, PROMPTS[:2], method=method, **options)
        second = ge.explain_image(loaded, pixels, PROMPTS[:2], method=method, **options)
        same_state(before, model_state(model))
        assert graph_tensors() == baseline
    finally:
        model.eval()
        model.requires_grad_(True)
    assert torch.isfinite(first.maps).all() and torch.equal(first.maps, second.maps)
    heat = first.heatmaps()
    assert heat.min() >= 0 and heat.max() <= 1


@pytest.mark.parametrize("method", [m for m in ge.list_methods()["image"] if m not in match_head_methods()])
def test_every_image_method_leaves_nothing_and_repeats_exactly(tiny, method):
    """Each registered method of a CLIP (the matching head's: on BLIP, below), on a model in train mode with
    a frozen image tower."""
    options = {"clip_surgery": {"surgery_targets": ge.encode_texts(tiny, PROMPTS)},
               "rise": {"masks": 200}}.get(method, {})
    _leaves_nothing_and_repeats_exactly(tiny, PIXELS[:1], method, tiny.model.visual, **options)


@pytest.mark.parametrize("method", sorted(match_head_methods()))
def test_the_matching_head_methods_leave_nothing_and_repeat_exactly_on_blip(method, tmp_path):
    from gradeclip_utils.adapters.hf_blip import BlipTokenizer
    from support.blip import bert_tokenizer, blip_model

    blip = ge.wrap_model(blip_model(image_size=64), tokenizer=BlipTokenizer(bert_tokenizer(tmp_path), 35))
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    _leaves_nothing_and_repeats_exactly(blip, pixels, method, blip.model.vision_model, score="itm")


@pytest.mark.parametrize("method", ge.list_methods()["text"])
def test_every_text_method_leaves_nothing_and_repeats_exactly(tiny, method):
    ge.explain_text(tiny, PIXELS[:1], PROMPTS, method=method)  # warm-up
    baseline = graph_tensors()
    model = tiny.model
    model.train()
    model.transformer.requires_grad_(False)
    try:
        before = model_state(model)
        first = ge.explain_text(tiny, PIXELS[:1], ["", *PROMPTS], method=method)
        second = ge.explain_text(tiny, PIXELS[:1], ["", *PROMPTS], method=method)
        same_state(before, model_state(model))
        assert graph_tensors() == baseline
    finally:
        model.eval()
        model.requires_grad_(True)
    assert torch.isfinite(first.word_importance).all() and torch.equal(first.word_importance, second.word_importance)
    assert first.words[0] == [] and float(first.word_importance[0, 0].abs().sum()) == 0
