"""The explained score (``score=``: the cosine, the logit, the probability among the prompts, a contrast of
two prompts): every method that takes a gradient of the score (or scores masked images) explains each of
them, as autograd of the score written out by hand from the model's embeddings says; the methods that take
no gradient refuse a score other than the cosine by name; the settings record the score.

The literal scores are written here from the embeddings (``tests/support/reference.py`` computes the maps from them
one image, one score and one backward pass at a time) on realistic random weights (``tests/support/realistic.py``)
and non-square inputs; the logit scale is read from the model itself (exp of its ``logit_scale``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt

from support import families as fam
from support import full_matrix
import gradeclip_utils as ge
from support import reference
from support.families import relative
from gradeclip_utils.adapters import UnsupportedMethodError
from gradeclip_utils.budget import caption_bytes
from gradeclip_utils.methods import IMAGE_METHODS, TEXT_METHODS, get_spec, method_specs
from gradeclip_utils.methods.grad_eclip import token_relevance
from gradeclip_utils.methods.rise import generate_masks
from gradeclip_utils.methods.scores import SCORES, ExplainedScore, others_logsumexp

TOL = 1e-5
PROMPTS = ["a red circle", "two blue squares left of a star", "a photo"]
PAIRS = [("a red circle", "a blue circle"), ("two blue squares", "a photo")]
TEXTS = ["a red circle and a blue square", "three green triangles", "a star"]
#: preprocessed pixels of a non-square picture (6 x 10 patches of the tiny model's 8 pixels)
PIXELS = fam.non_square_pixels(2, (48, 80))
#: what the score-explaining methods are; the others take no gradient of a score
EXPLAINING = {"grad_eclip", "grad_eclip_no_spatial", "grad_cam", "legrad", "game", "game_last", "m2ib", "rise"}
#: the methods that explain a matching head's score only (tests/adapters/test_hf_blip.py runs them)
MATCHING = {"itm_gradcam"}


def scale_of(model) -> float:
    """The logit scale, read from the model's own parameter (not from the package)."""
    return float(model.model.logit_scale.detach().exp())


def literal(name: str, scale: float):
    """The explained scores of one image embedding ``f`` against the target rows ``t``, written out."""
    if name == "cosine":
        return reference.cosines
    if name == "logit":
        return lambda f, t: scale * reference.cosines(f, t)
    if name == "probability":
        def probability(f, t):
            logits = scale * reference.cosines(f, t)
            e = torch.exp(logits - logits.max())
            return e / e.sum()
        return probability
    return lambda f, t: reference.cosines(f, t[0::2]) - reference.cosines(f, t[1::2])


def literal_text(name: str, scale: float):
    """The explained scores of all K texts' embeddings ``e`` against one image embedding ``g``: the
    probability is each text's softmax among the K texts."""
    if name == "probability":
        def probability(e, g):
            logits = scale * reference.cosines(g, e)
            x = torch.exp(logits - logits.max())
            return x / x.sum()
        return probability
    return lambda e, g: literal(name, scale)(g, e)


def targets_for(model, name: str):
    """The prompts of a call for ``name`` and the (T, D) unit embeddings the literal code explains."""
    prompts = PAIRS if name == "contrast" else PROMPTS
    texts = [t for pair in prompts for t in pair] if name == "contrast" else prompts
    with torch.no_grad():
        return prompts, F.normalize(model.model.encode_text(model.tokenize(texts)), dim=-1)


def test_the_scores_of_a_call(tiny):
    """``scores`` hold the explained score: the logit is scale x cosine, probability rows sum to 1 over the
    prompts, the contrast is cos(a) - cos(b), labelled "a rather than b"."""
    scale = scale_of(tiny)
    cosine = ge.explain_image(tiny, PIXELS, PROMPTS)
    logit = ge.explain_image(tiny, PIXELS, PROMPTS, score="logit")
    probability = ge.explain_image(tiny, PIXELS, PROMPTS, score="probability")
    contrast = ge.explain_image(tiny, PIXELS, PAIRS, score="contrast")
    singles = ge.explain_image(tiny, PIXELS, [t for pair in PAIRS for t in pair])
    assert relative(logit.scores, scale * cosine.scores) < TOL
    assert relative(probability.scores, torch.softmax(scale * cosine.scores.double(), dim=-1)) < TOL
    assert torch.allclose(probability.scores.sum(dim=1), torch.ones(2), atol=1e-6)
    assert relative(contrast.scores, singles.scores[:, 0::2] - singles.scores[:, 1::2]) < TOL
    assert contrast.prompts == ["a red circle rather than a blue circle", "two blue squares rather than a photo"]
    assert contrast.maps.shape[:2] == (2, 2)
    # the pairs as a (K, 2, D) tensor of embeddings, named by labels
    _, rows = targets_for(tiny, "contrast")
    embedded = ge.explain_image(tiny, PIXELS, rows.reshape(2, 2, -1), score="contrast", labels=["red", "squares"])
    assert relative(embedded.maps, contrast.maps) < TOL and embedded.prompts == ["red", "squares"]


@pytest.mark.parametrize("name", SCORES)
@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_grad_eclip_maps_are_autograd_of_the_literal_score(tiny, name, mode):
    prompts, targets = targets_for(tiny, name)
    got = ge.explain_image(tiny, PIXELS, prompts, layers=(0, 2), mode=mode, score=name)
    want, scores = reference.image_maps(tiny.model, PIXELS, targets, [0, 2], official=mode == "official",
                                        score=literal(name, scale_of(tiny)))
    assert float(want.abs().max()) > 1e-3, "a degenerate reference would prove nothing"
    assert relative(got.maps, want) < TOL and relative(got.scores, scores) < TOL


@pytest.mark.parametrize("name", ["logit", "probability", "contrast"])
def test_many_targets_take_the_jacobian_path_and_match(tiny, name):
    """K = 40 > D = 32 explained scores: the embedding's Jacobian times dS/df (the cosines' combined by
    the score) gives the maps autograd of the literal score gives."""
    dim = tiny.adapter.embed_dim
    rows = F.normalize(torch.randn(2 * (dim + 8), dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    targets = rows if name == "contrast" else rows[:dim + 8]
    prompts = targets.reshape(dim + 8, 2, dim) if name == "contrast" else targets
    got = ge.explain_image(tiny, PIXELS[:1], prompts, layers=(-1,), score=name)
    want, scores = reference.image_maps(tiny.model, PIXELS[:1], targets, [2], score=literal(name, scale_of(tiny)))
    assert got.maps.shape[1] == dim + 8
    assert relative(got.maps, want) < TOL and relative(got.scores, scores) < TOL


@pytest.mark.parametrize("name", SCORES)
def test_grad_cam_maps_are_autograd_of_the_literal_score(tiny, name):
    prompts, targets = targets_for(tiny, name)
    got = ge.explain_image(tiny, PIXELS, prompts, method="grad_cam", layers=(1, 2), score=name)
    want = reference.grad_cam_maps(tiny.model, PIXELS, targets, [1, 2], literal(name, scale_of(tiny)))
    assert float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL


@pytest.mark.parametrize("name", SCORES)
def test_legrad_maps_are_autograd_of_the_literal_score(tiny, name):
    prompts, targets = targets_for(tiny, name)
    got = ge.explain_image(tiny, PIXELS, prompts, method="legrad", score=name)  # layer_index -2: blocks 1 and 2
    want = reference.legrad_maps(tiny.model, PIXELS, targets, 1, literal(name, scale_of(tiny)))
    assert float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL


def _literal_matrix(name: str, scale: float, embedding, targets):
    """The (B, K) explained scores of a batch, written out from the embeddings (what GAME differentiates)."""
    cosines = (embedding @ targets.T) / embedding.norm(dim=-1, keepdim=True)
    if name == "logit":
        return scale * cosines
    if name == "probability":
        e = torch.exp(scale * cosines - (scale * cosines).max(dim=-1, keepdim=True).values)
        return e / e.sum(dim=-1, keepdim=True)
    if name == "contrast":
        return cosines[:, 0::2] - cosines[:, 1::2]
    return cosines


@pytest.mark.parametrize("name", SCORES)
def test_game_relevance_is_the_full_matrix_product_of_the_literal_score(tiny, name):
    """GAME's blockwise rows against the full N x N product over every block's attention, with the literal
    score differentiated (a score of cosines at the logit scale, GAME's default target)."""
    prompts, targets = targets_for(tiny, name)
    adapter, scale = tiny.adapter, scale_of(tiny)
    got = ge.explain_image(tiny, PIXELS, prompts, method="game", score=name)
    blocks = [0, 1, 2]
    trace = adapter.trace_image(PIXELS, blocks, keep_probs=True)
    explained = _literal_matrix(name, scale, trace.embedding, targets)
    factor = 1.0 if name in ("logit", "probability") else scale
    rows = full_matrix._relevance_rows(trace, blocks, factor * explained, 16)
    want = rows[..., 1:].reshape(*rows.shape[:2], *trace.grid)
    assert full_matrix.per_map_relative(got.maps, want) < 1e-5
    assert relative(got.scores, explained) < TOL


def test_game_logit_is_its_default_and_target_cosine_is_refused_with_scaled_scores(tiny):
    default = ge.explain_image(tiny, PIXELS, PROMPTS, method="game")
    logit = ge.explain_image(tiny, PIXELS, PROMPTS, method="game", score="logit")
    assert torch.equal(logit.maps, default.maps)
    assert relative(logit.scores, scale_of(tiny) * default.scores) < TOL
    for name in ("logit", "probability"):
        with pytest.raises(ValueError, match=rf"target='cosine'.*score={name!r}"):
            ge.explain_image(tiny, PIXELS, PROMPTS, method="game", score=name, target="cosine")


@pytest.mark.parametrize("name", ["probability", "contrast"])
def test_rise_scores_the_literal_score_of_the_masked_images(tiny, name):
    prompts, targets = targets_for(tiny, name)
    got = ge.explain_image(tiny, PIXELS, prompts, method="rise", masks=6, mask_batch=4, score=name)
    masks = generate_masks(6, tuple(PIXELS.shape[-2:]))
    score = literal(name, scale_of(tiny))
    with torch.no_grad():
        want = torch.zeros(got.maps.shape)
        for b in range(PIXELS.shape[0]):
            for n in range(6):
                embedding = reference.image_forward(tiny.model, PIXELS[b:b + 1] * masks[n], [])[0][0]
                want[b] += score(embedding, targets)[:, None, None] * masks[n]
        want /= 6 * 0.5
    assert relative(got.maps, want) < TOL


@pytest.mark.parametrize("method", ["grad_eclip", "grad_eclip_no_spatial", "grad_cam", "legrad"])
def test_the_logits_maps_are_the_cosines_times_the_logit_scale(tiny, method):
    cosine = ge.explain_image(tiny, PIXELS, PROMPTS, method=method)
    logit = ge.explain_image(tiny, PIXELS, PROMPTS, method=method, score="logit")
    assert float(cosine.maps.abs().max()) > 0
    assert relative(logit.maps, scale_of(tiny) * cosine.maps) < TOL


def test_the_probability_of_a_single_prompt_is_refused_before_any_work(tiny, monkeypatch):
    import gradeclip_utils.prompts as prompts

    monkeypatch.setattr(prompts, "encode_texts", lambda *a, **k: pytest.fail("a text was encoded"))
    for one in ("a red circle", ["a red circle"], torch.randn(1, tiny.adapter.embed_dim)):
        with pytest.raises(ValueError, match="score='probability'.*single prompt.*identically zero"):
            ge.explain_image(tiny, PIXELS, one, score="probability")
    with pytest.raises(ValueError, match="score='probability'.*single text.*identically zero"):
        ge.explain_text(tiny, PIXELS, "a red circle", score="probability")


def test_contrast_prompts_must_come_in_pairs(tiny):
    with pytest.raises(TypeError, match=r"score='contrast' takes its prompts as pairs \(a, b\)"):
        ge.explain_image(tiny, PIXELS, ["a red circle", "a blue circle"], score="contrast")
    with pytest.raises(TypeError, match=r"pairs \(a, b\)"):
        ge.explain_image(tiny, PIXELS, [("a", "b", "c")], score="contrast")
    with pytest.raises(ValueError, match=r"pairs \(K, 2, 32\)"):
        ge.explain_image(tiny, PIXELS, torch.randn(3, 32), score="contrast")
    one_pair = ge.explain_image(tiny, PIXELS, ("a red circle", "a blue circle"), score="contrast")
    assert one_pair.prompts == ["a red circle rather than a blue circle"]


# -------------------------------------------------------------------------------------------- text side
def _image_targets(model, pixels):
    with torch.no_grad():
        return F.normalize(reference.image_forward(model.model, pixels, [])[0], dim=-1)


@pytest.mark.parametrize("name", ["logit", "probability"])
def test_text_relevance_is_autograd_of_the_literal_score(tiny, name):
    """Text k's relevance is the gradient of its score with respect to its own tokens; the probability is
    its softmax among the K texts for each image."""
    tokens = tiny.tokenize(TEXTS)
    images = _image_targets(tiny, PIXELS)
    got = token_relevance(tiny.adapter, tokens, images, layers=2, score=name)
    want, scores = reference.text_relevance(tiny.model, tokens, images, [1, 2],
                                            score=literal_text(name, scale_of(tiny)))
    assert float(want.abs().max()) > 0
    assert relative(got.relevance, want) < TOL and relative(got.scores, scores) < TOL


def test_text_relevance_with_more_images_than_the_width_takes_the_jacobian_path(tiny):
    dim = tiny.adapter.embed_dim
    tokens = tiny.tokenize(TEXTS)
    images = F.normalize(torch.randn(dim + 1, dim, generator=torch.Generator().manual_seed(5)), dim=-1)
    got = token_relevance(tiny.adapter, tokens, images, layers=1, score="probability")
    want, scores = reference.text_relevance(tiny.model, tokens, images, [2],
                                            score=literal_text("probability", scale_of(tiny)))
    assert relative(got.relevance, want) < TOL and relative(got.scores, scores) < TOL


def test_word_importance_of_the_probability_and_the_logit_is_the_cosines(tiny):
    """d p_k / d(text k's tokens) = s p_k (1 - p_k) x the cosine's gradient: a positive multiple, so the
    normalised word importances are the cosine's; the scores are the probabilities (rows over the texts
    given for an image sum to 1)."""
    cosine = ge.explain_text(tiny, PIXELS, TEXTS)
    scale = scale_of(tiny)
    for name in ("logit", "probability"):
        other = ge.explain_text(tiny, PIXELS, TEXTS, score=name)
        assert float((other.word_importance - cosine.word_importance).abs().max()) < 1e-5, name
        assert other.settings["score"] == name
    probability = ge.explain_text(tiny, PIXELS, TEXTS, score="probability")
    assert relative(probability.scores, torch.softmax(scale * cosine.scores.double(), dim=1)) < TOL
    assert torch.allclose(probability.scores.sum(dim=1), torch.ones(2), atol=1e-6)


@pytest.mark.parametrize("method,mode", [("grad_eclip", "faithful"), ("grad_eclip", "official"), ("game", "faithful")])
def test_the_probability_runs_over_all_texts_when_they_come_in_chunks(tiny, method, mode):
    """A budget of one caption: each text is its own chunk, and the softmax still runs over all of them
    (each chunk gets the other texts' logits first, from the cosines the method explains: the official
    mode's own)."""
    whole = ge.explain_text(tiny, PIXELS, TEXTS, method=method, mode=mode, score="probability")
    chunked = ge.explain_text(tiny, PIXELS, TEXTS, method=method, mode=mode, score="probability",
                              memory_budget=caption_bytes(tiny.adapter))
    assert chunked.settings["caption_chunk"] == 1 and whole.settings["caption_chunk"] == len(TEXTS)
    assert relative(chunked.scores, whole.scores) < 1e-6
    assert float((chunked.word_importance - whole.word_importance).abs().max()) < 1e-5
    assert torch.allclose(chunked.scores.sum(dim=1), torch.ones(2), atol=1e-6)


def test_the_contrast_has_no_text_side(tiny):
    for method in ("grad_eclip", "game", "m2ib"):
        with pytest.raises(ValueError, match=rf"{method}'s word importance cannot explain score='contrast'.*separate "
                                             "tokens"):
            ge.explain_text(tiny, PIXELS, TEXTS, method=method, score="contrast")


def test_others_logsumexp_is_the_sum_over_the_others():
    logits = torch.tensor([[30.0, 1.0], [0.0, 1.0], [-5.0, 1.0]], dtype=torch.float64)
    want = torch.stack([torch.logsumexp(logits[[j for j in range(3) if j != i]], dim=0) for i in range(3)])
    assert torch.allclose(others_logsumexp(logits, dim=0), want, rtol=1e-12, atol=0)
    # a text far ahead of the others: p (1 - p) keeps its size (float32 would round p to 1 and it to zero)
    score = ExplainedScore("probability", 1.0)
    cos = torch.tensor([[20.0], [0.0], [1.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(score.of_texts(cos).sum(), [cos])
    z = torch.tensor(20.0 - math.log(1 + math.e), dtype=torch.float64)
    assert float(grad[0, 0]) == pytest.approx(float(torch.sigmoid(z) * torch.sigmoid(-z)), rel=1e-6)
    assert float(torch.sigmoid(z.float())) == 1.0  # what float32 would have differentiated


# ---------------------------------------------------------------------------------- declarations and settings
@pytest.mark.parametrize("name", SCORES)
def test_columns_keep_some_scores_computed_among_every_row(name):
    """ExplainedScore.columns: of_images and pull give those columns of what they give for all K (the
    probability's softmax over every row), in the order given, repeats allowed; a column the rows do not give
    is refused."""
    generator = torch.Generator().manual_seed(3)
    cosines, per_row = torch.randn(2, 6, generator=generator), torch.randn(2, 6, 5, generator=generator)
    columns = (2, 0, 2)
    whole, some = ExplainedScore(name, 7.0), ExplainedScore(name, 7.0, columns=columns)
    assert torch.equal(some.of_images(cosines), whole.of_images(cosines)[:, list(columns)])
    assert torch.allclose(some.pull(per_row, cosines), whole.pull(per_row, cosines)[:, list(columns)], atol=1e-6)
    assert some.count(6) == 3 and whole.count(6) == 6 // whole.rows
    with pytest.raises(ValueError, match="columns must be one or more of the 1 explained scores"):
        ExplainedScore(name, columns=(1,)).count(whole.rows)


def test_which_methods_explain_which_score():
    explaining = {spec.name for spec in method_specs() if "score" in spec.uses}
    assert explaining == EXPLAINING | MATCHING
    for spec in method_specs():
        if spec.name in MATCHING:
            assert spec.scores == ("itm",) and spec.text is None
        elif spec.name in EXPLAINING:
            assert spec.scores == SCORES
            assert spec.text is None or spec.text_scores == ("cosine", "logit", "probability")
        else:
            assert spec.scores == ("cosine",)


@pytest.mark.parametrize("name", sorted(set(IMAGE_METHODS) - EXPLAINING - MATCHING))
def test_the_methods_without_a_gradient_of_the_score_refuse_another_score_by_name(tiny, name):
    for score in ("logit", "probability"):
        with pytest.raises(ValueError, match=rf"{name} does not use the setting score \(got {score!r}\).*no "
                                             "gradient of a score"):
            ge.explain_image(tiny, PIXELS, PROMPTS, method=name, score=score)
    if name in TEXT_METHODS:
        with pytest.raises(ValueError, match=rf"{name} does not use the setting score"):
            ge.explain_text(tiny, PIXELS, TEXTS, method=name, score="probability")
    ge.explain_image(tiny, PIXELS, PROMPTS, method=name, score="cosine")  # the default is the default


def test_the_settings_record_the_score(tiny, tmp_path):
    default = ge.explain_image(tiny, PIXELS, PROMPTS)
    assert default.settings["score"] == "cosine" and default.config.score == "cosine"
    assert "score " not in default.plot()._suptitle.get_text()  # the default is not named in the title
    plt.close("all")
    ex = ge.explain_image(tiny, PIXELS, PROMPTS, score="probability")
    assert ex.settings["score"] == "probability" and ex.config.score == "probability"
    assert ex.config.keywords()["score"] == "probability"
    assert ge.ImageExplanation.load(ex.save(tmp_path / "ex")).settings["score"] == "probability"
    figure = ex.plot()
    assert "score probability" in figure._suptitle.get_text()
    assert any("p = " in ax.get_title() for ax in figure.axes)
    plt.close(figure)
    with pytest.raises(ValueError, match=r"score must be one of \('cosine', 'logit', 'probability', 'contrast', 'itc', "
                                         r"'itm'\), got 'odds'"):
        ge.ExplainConfig(score="odds")
    with pytest.raises(ValueError, match="score must be one of"):
        ge.explain_image(tiny, PIXELS, PROMPTS, score="odds")
    # a method that ignores the score records none
    assert "score" not in ge.explain_image(tiny, PIXELS, PROMPTS, method="rollout").settings


def test_every_family_carries_its_logit_scale_and_a_pair_without_one_is_refused_by_name():
    model = fam.reference_open_clip()
    loaded = {
        "open_clip": ge.wrap_model(model, fam.preprocess(), fam.tokenizer(), name="open_clip"),
        "hf": ge.wrap_model(fam.to_hf(model), fam.preprocess(), fam.tokenizer(), name="hf"),
        "openai": ge.wrap_model(fam.to_openai(model), fam.preprocess(), fam.tokenizer(), name="openai"),
        "resnet": ge.wrap_model(fam.reference_open_clip(resnet=True), fam.preprocess(), fam.tokenizer(), name="rn"),
    }
    for name, item in loaded.items():
        assert item.adapter.has_logit_scale and item.adapter.logit_scale == pytest.approx(100.0), name
    assert ge.load_model("synthetic").adapter.has_logit_scale
    pair = ge.wrap_model(fam.to_hf_pair(model), fam.preprocess(), fam.tokenizer(), name="hf-pair")
    assert not pair.adapter.has_logit_scale
    pixels = fam.non_square_pixels(1, (48, 80))
    for name in ("logit", "probability"):
        with pytest.raises(UnsupportedMethodError, match=rf"score={name!r} needs the model's logit scale.*Hugging "
                                                         "Face CLIP"):
            ge.explain_image(pair, pixels, PROMPTS, score=name)
        with pytest.raises(UnsupportedMethodError, match=rf"score={name!r}"):
            ge.explain_text(pair, pixels, TEXTS, score=name)
    contrast = ge.explain_image(pair, pixels, PAIRS, score="contrast")  # the contrast needs no scale
    want = ge.explain_image(loaded["open_clip"], pixels, PAIRS, score="contrast")
    assert relative(contrast.maps, want.maps) < TOL
    got = ge.explain_image(loaded["hf"], pixels, PROMPTS, score="probability")
    want = ge.explain_image(loaded["open_clip"], pixels, PROMPTS, score="probability")
    assert relative(got.maps, want.maps) < TOL and relative(got.scores, want.scores) < TOL


@pytest.mark.parametrize("name", ["probability", "contrast"])
def test_m2ib_optimises_the_literal_score_of_each_pair(tiny, name):
    """M2IB's fit is the pair's explained score (the literal per-pair optimisation of test_baselines with the
    literal score as its fit); the paired mode takes the probability among its B targets."""
    from methods.test_baselines import grid_of, literal_m2ib, m2ib_literal_setup  # by its folder: any order

    prompts, targets = targets_for(tiny, name)
    pixels = fam.non_square_pixels(2, (48, 48))
    steps, samples, seed = 2, 2, 7
    ex = ge.explain_image(tiny, pixels, prompts, method="m2ib", ib_layer=1, steps=steps, samples=samples, seed=seed,
                          score=name)
    hidden, finish = m2ib_literal_setup(tiny, pixels)
    generator = torch.Generator().manual_seed(seed)
    noise = [torch.randn(samples, *hidden.shape[1:], generator=generator) for _ in range(steps)]
    score = literal(name, scale_of(tiny))
    with torch.enable_grad():
        for b in range(2):
            for k in range(ex.maps.shape[1]):
                kl = literal_m2ib(hidden[b], None, finish, noise, 0.1, 1.0, steps,
                                  fit=lambda f, k=k: score(f, targets)[k])
                expected = kl.sum(-1)[1:].reshape(grid_of(tiny.model, pixels))
                assert (ex.maps[b, k] - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))
    if name == "probability":
        paired = IMAGE_METHODS["m2ib"](tiny.adapter, pixels, targets[:2], paired=True, score=name, ib_layer=1,
                                       steps=steps, samples=samples, seed=seed)
        two = ge.explain_image(tiny, pixels, prompts[:2], method="m2ib", ib_layer=1, steps=steps, samples=samples,
                               seed=seed, score=name)
        assert torch.allclose(paired.scores[:, 0], two.scores.diagonal(), atol=1e-6)
        assert torch.allclose(paired.maps[:, 0], torch.stack([two.maps[0, 0], two.maps[1, 1]]), rtol=1e-5, atol=1e-6)


def test_m2ib_word_importance_of_the_probability(tiny):
    words = ge.explain_text(tiny, PIXELS, TEXTS, method="m2ib", score="probability", steps=2, samples=2)
    assert torch.allclose(words.scores.sum(dim=1), torch.ones(2), atol=1e-6)
    assert get_spec("m2ib").text_scores == ("cosine", "logit", "probability")
