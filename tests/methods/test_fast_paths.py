"""The fast paths of Grad-ECLIP give the results of the slow ones (never timings).

Fast: one vectorised backward for many cotangents, the embedding-Jacobian path for K > D, chunks of
cotangents, many images and many prompts in one call. Slow: one ``autograd.grad`` per cotangent, the
per-target VJP path, one chunk, one image or one prompt at a time, and the authors' per-prompt loop
that the benchmark times. tests/methods/test_grad_eclip.py checks both against the literal equations; these
tests compare the paths with each other, in the settings that one does not cover.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradeclip_utils.session import explaining
from gradeclip_utils.methods import method_specs
from gradeclip_utils.methods.autograd import batched_vjp
from gradeclip_utils.methods.grad_eclip import channel_weights, image_maps, token_relevance

TOL = 1e-5
CAPTIONS = ["a red circle and a blue square", "three green triangles", "a star", "two dogs on a sofa"]


def unit(count: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def pixels(count: int, size=(48, 48), seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def assert_close(fast: torch.Tensor, slow: torch.Tensor, tol: float = TOL) -> None:
    assert fast.shape == slow.shape
    assert slow.abs().max() > 1e-4, "the slow result is degenerate; the comparison would prove nothing"
    assert (fast - slow).abs().max() <= tol


# ------------------------------------------------------------------------- the vectorised backward
@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_batched_vjp_equals_one_backward_per_cotangent(tiny, tower, chunk):
    """Every row of the vectorised VJP equals its own ``autograd.grad`` call, for several inputs, chunk
    sizes that do and do not divide the count, and an input the output does not depend on (zeros)."""
    adapter = tiny.adapter
    with explaining(tiny.model):
        if tower == "image":
            trace = adapter.trace_image(pixels(2), [0, 2])
        else:
            trace = adapter.trace_text(tiny.tokenize(CAPTIONS), [1, 2])
        unused = torch.zeros(3, 5, requires_grad=True)
        inputs = [trace.blocks[layer].token_output for layer in sorted(trace.blocks)] + [unused]
        outputs = trace.embedding
        cotangents = torch.randn(7, *outputs.shape, generator=torch.Generator().manual_seed(1))
        slow = [torch.autograd.grad(outputs, inputs, cotangents[index], retain_graph=True, allow_unused=True)
                for index in range(7)]
        fast = batched_vjp(outputs, inputs, lambda start, stop: cotangents[start:stop], 7, chunk)
        for index in range(7):
            for got, want, inp in zip(fast, slow[index], inputs):
                want = torch.zeros_like(inp) if want is None else want
                assert got.shape == (7, *inp.shape)
                assert (got[index] - want).abs().max() <= TOL
        assert fast[-1].abs().max() == 0
        assert all(g.abs().max() > 1e-4 for g in fast[:-1])


def test_batched_vjp_rejects_a_chunk_below_one():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="chunk"):
        batched_vjp(x * 2, [x], lambda start, stop: torch.ones(stop - start, 2), 2, 0)


# ------------------------------------------------------------------- Jacobian path against VJP path
@pytest.mark.parametrize("layers", [[2], [0, 2]], ids=["last", "several"])
@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_jacobian_path_equals_vjp_path_for_image_weights(tiny, layers, mode):
    """K = D + 9 targets take the Jacobian path; the same targets in two halves (each <= D) take the
    VJP path. The channel weights and scores must agree."""
    adapter = tiny.adapter
    dim = adapter.embed_dim
    targets = unit(dim + 9, dim, seed=4)
    with explaining(tiny.model):
        trace = adapter.trace_image(pixels(3), layers, mode=mode)
        jac_weights, jac_scores = channel_weights(trace, layers, targets, chunk=5)
        halves = [channel_weights(adapter.trace_image(pixels(3), layers, mode=mode), layers, part)
                  for part in (targets[:20], targets[20:])]
    assert targets[:20].shape[0] <= dim and targets[20:].shape[0] <= dim
    for layer in layers:
        vjp = torch.cat([h[0][layer] for h in halves], dim=1)
        assert_close(jac_weights[layer], vjp)
    assert_close(jac_scores, torch.cat([h[1] for h in halves], dim=1))


def test_jacobian_path_equals_vjp_path_for_text(tiny):
    """Text relevance with B = D + 4 image targets (Jacobian path) equals the same in two calls of at
    most D targets (VJP path)."""
    dim = tiny.adapter.embed_dim
    image_targets = unit(dim + 4, dim, seed=5)
    tokens = tiny.tokenize(CAPTIONS)
    with explaining(tiny.model):
        fast = token_relevance(tiny.adapter, tokens, image_targets, layers=2)
        parts = [token_relevance(tiny.adapter, tokens, part, layers=2)
                 for part in (image_targets[:dim // 2], image_targets[dim // 2:])]
    assert_close(fast.relevance, torch.cat([p.relevance for p in parts], dim=0))
    assert_close(fast.scores, torch.cat([p.scores for p in parts], dim=0))


# ------------------------------------------------------------------------------- chunked cotangents
@pytest.mark.parametrize("count", [7, 41], ids=["vjp-path", "jacobian-path"])
def test_chunk_size_does_not_change_the_maps(tiny, count):
    targets = unit(count, tiny.adapter.embed_dim, seed=6)
    images = pixels(2, seed=2)
    with explaining(tiny.model):
        whole = image_maps(tiny.adapter, images, targets, layers=[0, 2], chunk=1000)
        for chunk in (1, 3, 16):
            chunked = image_maps(tiny.adapter, images, targets, layers=[0, 2], chunk=chunk)
            assert_close(chunked.maps, whole.maps, tol=1e-6)


# ------------------------------------------------------------------- many prompts, many images at once
@pytest.mark.parametrize("count", [5, 40], ids=["vjp-path", "jacobian-path"])
@pytest.mark.parametrize("layers", [[2], [1, 2]], ids=["last", "several"])
def test_prompts_at_once_equal_one_prompt_at_a_time(tiny_layerscale, count, layers):
    adapter = tiny_layerscale.adapter
    targets = unit(count, adapter.embed_dim, seed=7)
    images = pixels(2, seed=3)
    with explaining(tiny_layerscale.model):
        together = image_maps(adapter, images, targets, layers=layers)
        alone = [image_maps(adapter, images, targets[k:k + 1], layers=layers) for k in range(count)]
    assert_close(together.maps, torch.cat([a.maps for a in alone], dim=1))
    assert_close(together.scores, torch.cat([a.scores for a in alone], dim=1))


@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_images_at_once_equal_one_image_at_a_time(tiny, mode):
    targets = unit(40, tiny.adapter.embed_dim, seed=8)  # the Jacobian path: the images share nothing
    images = pixels(4, size=(40, 56), seed=4)
    with explaining(tiny.model):
        together = image_maps(tiny.adapter, images, targets, layers=[0, 2], mode=mode)
        alone = [image_maps(tiny.adapter, images[b:b + 1], targets, layers=[0, 2], mode=mode) for b in range(4)]
    assert_close(together.maps, torch.cat([a.maps for a in alone]))


def test_captions_at_once_equal_one_caption_at_a_time(tiny):
    image_targets = unit(3, tiny.adapter.embed_dim, seed=9)
    tokens = tiny.tokenize(CAPTIONS)
    with explaining(tiny.model):
        together = token_relevance(tiny.adapter, tokens, image_targets, layers=2)
        alone = [token_relevance(tiny.adapter, tokens[k:k + 1], image_targets, layers=2) for k in range(len(CAPTIONS))]
    assert_close(together.relevance, torch.cat([a.relevance for a in alone], dim=1))


# ---------------------------------------------------------------------- the benchmark's slow loop
def _benchmark_module(name: str = "speed"):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_per_prompt_loop_equals_batched_maps(tiny_layerscale):
    """The authors' loop that the benchmark times computes the same maps as the batched path (so the
    speed-up compares like with like)."""
    loop = _benchmark_module().authors_loop
    targets = unit(6, tiny_layerscale.adapter.embed_dim, seed=10)
    images = pixels(2, size=(40, 56), seed=5)
    with explaining(tiny_layerscale.model):
        slow = loop(tiny_layerscale, images, targets)
        fast = image_maps(tiny_layerscale.adapter, images, targets)
    assert_close(fast.maps, slow)


def test_vit_b16_many_prompts_equal_per_prompt_loop(vit_b16):
    """ViT-B-16 (D = 512): K = 520 prompts take the Jacobian path; a sample of them, one at a time
    through the authors' loop, must give the same maps."""
    loop = _benchmark_module().authors_loop
    targets = unit(520, vit_b16.adapter.embed_dim, seed=11)
    images = pixels(1, size=(64, 80), seed=6)
    picked = [0, 137, 519]
    with explaining(vit_b16.model):
        fast = image_maps(vit_b16.adapter, images, targets)
        slow = loop(vit_b16, images, targets[picked])
    assert_close(fast.maps[:, picked], slow)


# ------------------------------------------------------------------------------ nothing accumulates
def test_repeated_calls_leave_no_tensors_behind(tiny):
    """The count of live tensors is the same after 5 and after 25 calls: no graph, capture or
    cotangent outlives a call."""
    import gradeclip_utils as ge

    targets = unit(40, tiny.adapter.embed_dim, seed=12)
    images = pixels(2, seed=7)

    def live() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance on a few deprecated module attributes warns
            warnings.simplefilter("ignore")
            return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))

    for _ in range(5):
        ge.explain_image(tiny, images, targets, layers=(0, 2), progress=False)
    before = live()
    for _ in range(20):
        ge.explain_image(tiny, images, targets, layers=(0, 2), progress=False)
    assert live() == before


# ------------------------------------------------------------- text: the graph stops at the end tokens
@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_text_trace_over_the_prefix_equals_the_full_trace(tiny, mode):
    """Under the causal mask the text trace keeps a graph only up to the last end token. Asking for the
    final tokens turns that off; embeddings, captures and channel weights must be the same."""
    adapter = tiny.adapter
    tokens = tiny.tokenize(CAPTIONS)
    assert int(adapter.text_token_index(tokens).max()) + 1 < tokens.shape[1], "no padding: nothing to skip"
    targets = unit(3, adapter.embed_dim, seed=13)
    with explaining(tiny.model):
        fast = adapter.trace_text(tokens, [0, 2], mode=mode)
        slow = adapter.trace_text(tokens, [0, 2], mode=mode, keep_final_tokens=True)
        assert_close(fast.embedding, slow.embedding)
        for layer in (0, 2):
            for name in ("q", "k", "v", "attn_output", "token_output"):
                got, want = getattr(fast.blocks[layer], name), getattr(slow.blocks[layer], name)
                assert got.shape == want.shape
                assert (got - want).abs().max() <= TOL
        fast_weights, _ = channel_weights(fast, [0, 2], targets)
        slow_weights, _ = channel_weights(slow, [0, 2], targets)
    for layer in (0, 2):
        assert_close(fast_weights[layer], slow_weights[layer])


def test_causal_prefix_only_under_a_causal_mask():
    from gradeclip_utils.adapters.transformer import causal_prefix

    causal = torch.full((6, 6), float("-inf")).triu(1)
    index = torch.tensor([2, 3])
    assert causal_prefix(causal, index, 6) == 4
    assert causal_prefix(causal, torch.tensor([5, 1]), 6) is None  # nothing after the last
    assert causal_prefix(torch.zeros(6, 6), index, 6) is None  # bidirectional
    assert causal_prefix(None, index, 6) is None
    padded = causal.clone()
    padded[:, 5] = float("-inf")  # a key masked for every query: not the plain causal mask
    assert causal_prefix(padded, index, 6) is None


# ------------------------------------------------------------------------------ the memory benchmark
def test_memory_benchmark_captions_fill_the_context(tiny):
    captions = _benchmark_module("memory").full_captions(tiny, 5)
    assert len(set(captions)) == 5
    ends = tiny.adapter.text_token_index(tiny.tokenize(captions))
    assert (ends == tiny.adapter.context_length - 1).all()


def test_memory_benchmark_measures_each_case_in_its_own_process(tmp_path, capsys):
    """One case on the embedded model: a peak and times come back from the case's process."""
    import json

    out = tmp_path / "memory.json"
    assert _benchmark_module("memory").main(["--cases", "rollout_1x1,forward_b1", "--threads", "1",
                                             "--json", str(out)]) == 0
    cases = {case["case"]: case for case in json.loads(out.read_text())["cases"]}
    assert set(cases) == {"rollout_1x1", "forward_b1"}
    for case in cases.values():
        assert "error" not in case, case
        assert case["wall_s"] > 0 and case["before_bytes"] > 0
        assert case["peak_bytes"] is None or case["peak_bytes"] >= 0
    assert "rollout_1x1" in capsys.readouterr().out


# ---------------------------------------------------------------------- explain_text in chunks of captions
TEXT_METHOD_OPTIONS = {"m2ib": {"steps": 2, "samples": 2}}  # M2IB's defaults are slow; its chunks are the same
MANY_CAPTIONS = CAPTIONS + ["", "a cat", "one blue square above a red circle", "dogs and cats"]


@pytest.mark.parametrize("method", [spec.name for spec in method_specs() if spec.text is not None])
def test_captions_in_chunks_equal_one_batch(tiny, method):
    """Every text method: captions cut into chunks by a small memory budget give what one batch gives."""
    from gradeclip_utils import explain_text
    from gradeclip_utils.budget import caption_bytes

    from gradeclip_utils.methods import get_spec

    options = dict(TEXT_METHOD_OPTIONS.get(method, {}))
    if "layers" in get_spec(method).uses:  # the others refuse a setting they would ignore
        options["layers"] = 2
    one = caption_bytes(tiny.adapter)
    images = pixels(2, seed=3)
    whole = explain_text(tiny, images, MANY_CAPTIONS, method=method, memory_budget=100 * one, **options)
    chunked = explain_text(tiny, images, MANY_CAPTIONS, method=method, memory_budget=3 * one + 1, **options)
    assert whole.settings["caption_chunk"] == len(MANY_CAPTIONS) and chunked.settings["caption_chunk"] == 3
    assert_close(chunked.token_importance, whole.token_importance)
    assert_close(chunked.word_importance, whole.word_importance)
    assert_close(chunked.scores, whole.scores)
    assert chunked.words == whole.words and chunked.tokens == whole.tokens


def test_a_budget_below_one_caption_raises_before_any_work(tiny, monkeypatch):
    from gradeclip_utils import explain, explain_text
    from gradeclip_utils.budget import caption_bytes

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the budget was checked")

    monkeypatch.setattr(explain, "prepare_images", no_work)
    monkeypatch.setattr(explain, "run_text_method", no_work)
    one = caption_bytes(tiny.adapter)
    with pytest.raises(ValueError, match=f"needs about {one:,} bytes"):
        explain_text(tiny, pixels(1), CAPTIONS, memory_budget=one - 1)
    with pytest.raises(ValueError, match="memory_budget must be"):
        explain_text(tiny, pixels(1), CAPTIONS, memory_budget=-1)


def test_caption_estimate_and_default_budget(tiny, monkeypatch):
    from gradeclip_utils import budget

    # 24 values per token and block x width 48 x 16 tokens x 3 blocks x 4 bytes (fp32)
    assert budget.caption_bytes(tiny.adapter) == 24 * 48 * 16 * 3 * 4
    monkeypatch.setattr(budget, "free_memory", lambda device: 10 * 2 ** 20)
    assert budget.default_budget("cpu") == 5 * 2 ** 20  # the safety fraction of what is free
    monkeypatch.setattr(budget, "free_memory", lambda device: 64 * 2 ** 30)
    assert budget.default_budget("cpu") == budget.DEFAULT_CAP  # capped
    assert budget.chunk_size(10, 3, 2) == 2 and budget.chunk_size(10, 3, 100) == 3
