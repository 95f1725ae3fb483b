"""The whole-dataset explanation: shards read back as explain_image's maps of each image; a stopped run
resumes; two torchrun processes write the files one process writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import zlib
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from PIL import Image

from gradeclip_utils import explain_image, maps_store
from gradeclip_utils.explain_dataset import explain_dataset, find_images
from gradeclip_utils.maps_store import DatasetMaps
from support.launch import torchrun

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def make_tree(root, sizes=((64, 48), (48, 64), (50, 50), (100, 30), (64, 48), (30, 90), (64, 48)), seed=0):
    """Random pictures of several sizes in two class folders, one JPEG with an EXIF rotation (its
    header size is the unrotated one)."""
    rng = np.random.default_rng(seed)
    for i, (width, height) in enumerate(sizes):
        folder = root / ("tabby_cat" if i % 2 else "golden_retriever")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown as 40 x 72
    Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(root / "tabby_cat" / "turned.jpg",
                                                                            exif=exif.tobytes())
    return root


def assert_same_as_explain_image(model, folder, out, prompts, **options):
    """Every image's stored maps and scores are explain_image's of the image against the run's prompts (or
    its classes); with classes="own" its own class's, which for the probability is its class's column of
    explain_image against every class (the softmax over all of them)."""
    maps = DatasetMaps(out)
    targets = maps.targets()
    own = maps.settings["targets"]["per_image"] == "own"
    among_all = options.get("score") == "probability"
    assert [entry["key"] for entry in maps.images] == find_images(folder) == sorted(maps.keys()) and len(maps) == 8
    for stored in maps.values():
        if prompts is not None:
            given = prompts
        elif own and not among_all:
            given = targets[stored.label:stored.label + 1]
        else:
            given = targets
        downscaled = maps.images[stored.index]["downscaled"]
        with pytest.warns(UserWarning, match="downscaled") if downscaled else contextlib.nullcontext():
            reference = explain_image(model, folder / stored.key, given, **options)
        want, want_scores = reference.raw[0], reference.scores[0]
        if own and among_all:
            want, want_scores = want[stored.label:stored.label + 1], want_scores[stored.label:stored.label + 1]
        assert stored.maps.shape == want.shape and stored.maps.dtype == torch.float32
        assert torch.allclose(stored.maps, want, rtol=0, atol=1e-5 * float(want.abs().max())), stored.key
        assert torch.allclose(stored.scores, want_scores, atol=1e-6), stored.key
        assert tuple(stored.input_size) == tuple(np.asarray(reference.images[0]).shape[:2])
        assert torch.equal(maps[stored.key].maps, stored.maps) and torch.equal(maps[stored.index].maps, stored.maps)
    return maps


@pytest.mark.parametrize("classes", [None, "own", "all"])
def test_shards_read_back_as_explain_image_of_each_image(tiny, tmp_path, classes):
    folder = make_tree(tmp_path / "data")
    out = tmp_path / "maps"
    prompts = PROMPTS if classes is None else None
    explain_dataset(tiny, folder, out, prompts=prompts, classes=classes, templates="simple", batch_size=2,
                    shard_size=3, max_patches=50, progress=False)
    maps = assert_same_as_explain_image(tiny, folder, out, prompts, max_patches=50)
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["distributed"] == {"world_size": 1, "items_per_rank": [8]}
    entries = {entry["key"]: entry for entry in index["images"]}
    assert entries["tabby_cat/turned.jpg"]["input_size"] == [72, 40]  # EXIF rotation applied to the header size
    assert entries["tabby_cat/im3.png"]["downscaled"] and not entries["tabby_cat/im1.png"]["downscaled"]
    for entry in index["images"]:  # 100 x 30 is 13 x 4 = 52 patches > 50: downscaled, as explain_image does
        assert list(maps[entry["key"]].maps.shape[-2:]) == entry["grid"]
    assert all(len(shard["batches"]) and sum(map(len, shard["batches"])) <= 3 for shard in index["shards"])
    if classes is not None:
        assert maps.prompts == ["golden retriever", "tabby cat"]
        assert [entries[k]["label"] for k in ("golden_retriever/im0.png", "tabby_cat/im1.png")] == [0, 1]
        want = ["tabby cat"] if classes == "own" else ["golden retriever", "tabby cat"]
        assert maps["tabby_cat/im1.png"].prompts == want
    heat = maps["tabby_cat/im1.png"].heatmaps()
    assert heat.shape[-2:] == (64, 48) and float(heat.min()) >= 0 and float(heat.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("classes", [None, "own"])
def test_a_probability_run_explains_each_class_among_all_of_them(tiny, tmp_path, classes):
    """score="probability" reaches the maps: each image's equal explain_image(..., score="probability") against
    all the prompts, or with classes="own" its class's column against all the classes (not the softmax among
    the classes of its batch: at the model's resolution the batches mix the two classes). The index records the
    score (a default run records none: its settings are the same but for it), and resuming with another score,
    or the default, is refused."""
    folder = make_tree(tmp_path / "data")
    prompts = PROMPTS if classes is None else None
    options = dict(prompts=prompts, classes=classes, templates="simple", batch_size=3, shard_size=4,
                   resolution="model", progress=False)
    explain_dataset(tiny, folder, tmp_path / "maps", score="probability", **options)
    maps = assert_same_as_explain_image(tiny, folder, tmp_path / "maps", prompts, resolution="model",
                                        score="probability")
    assert classes is None or any(len({maps.images[i]["label"] for i in batch}) == 2
                                  for shard in maps.index["shards"] for batch in shard["batches"])
    assert maps.score == maps.settings["score"] == "probability"
    if classes is None:  # every image's probabilities over the prompts sum to 1
        assert all(float(stored.scores.sum()) == pytest.approx(1.0, abs=1e-5) for stored in maps.values())
    explain_dataset(tiny, folder, tmp_path / "default", **options)
    default = DatasetMaps(tmp_path / "default")
    assert "score" not in default.settings and default.score == "cosine"
    assert {k: v for k, v in maps.settings.items() if k != "score"} == default.settings
    for score in ("logit", "cosine"):
        with pytest.raises(ValueError, match="other settings"):
            explain_dataset(tiny, folder, tmp_path / "maps", score=score, **options)


def test_a_contrast_run_takes_its_pairs_from_the_prompts_file(tiny, tmp_path, monkeypatch):
    """gradeclip explain-dataset --score contrast reads a pair per line of the --prompts file, "a | b" (blank
    lines skipped, spaces around the prompts dropped): each image's maps are explain_image's of the pairs, named
    "a rather than b", and the stored targets are the pairs' (P, 2, D), which explain_image takes as they are."""
    from gradeclip_utils import cli, loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: tiny)
    folder = make_tree(tmp_path / "data")
    (tmp_path / "pairs.txt").write_text("a red circle | a blue circle\n\n  a dog|a cat \n")
    out = tmp_path / "maps"
    assert cli.main(["explain-dataset", str(folder), "--prompts", str(tmp_path / "pairs.txt"), "--score", "contrast",
                     "--out", str(out), "--max-patches", "50", "--batch-size", "3"]) == 0
    pairs = [("a red circle", "a blue circle"), ("a dog", "a cat")]
    maps = assert_same_as_explain_image(tiny, folder, out, pairs, max_patches=50, score="contrast")
    assert maps.score == "contrast" and maps.prompts == ["a red circle rather than a blue circle",
                                                         "a dog rather than a cat"]
    assert maps.targets().shape == (2, 2, tiny.adapter.embed_dim)
    stored = maps["tabby_cat/im1.png"]
    again = explain_image(tiny, folder / stored.key, maps.targets(), score=maps.score, max_patches=50)
    assert torch.allclose(again.raw[0], stored.maps, rtol=0, atol=1e-5 * float(stored.maps.abs().max()))


def test_a_score_is_checked_before_any_work(tiny, tmp_path, capsys):
    """A bad score, one the prompts cannot carry, the contrast without pairs or with classes, and a score the
    method does not explain are refused by name before the output folder is made; the command lists the
    choices."""
    from gradeclip_utils import cli

    folder = make_tree(tmp_path / "data")
    out = tmp_path / "maps"
    refusals = [
        (dict(prompts=PROMPTS, score="banana"),
         r"score must be one of \('cosine', 'logit', 'probability', 'contrast', 'itc', 'itm'\), got 'banana'"),
        (dict(prompts=PROMPTS[:1], score="probability"), "score='probability' is each prompt's softmax"),
        (dict(classes="own", score="contrast"), "score='contrast' explains pairs of prompts .* classes do not give"),
        (dict(prompts=["a red circle", "a blue circle"], score="contrast"),
         r"pairs, a pair a line: two prompts separated by '\|'.*got 'a red circle'"),
        (dict(prompts=["a | b | c"], score="contrast"), "pairs, a pair a line"),
        (dict(prompts=PROMPTS, score="logit", method="raw_attention"), "raw_attention does not use the setting score"),
    ]
    for arguments, message in refusals:
        with pytest.raises(ValueError, match=message):
            explain_dataset(tiny, folder, out, progress=False, **arguments)
    assert not out.exists()
    with pytest.raises(SystemExit):
        cli.main(["explain-dataset", str(folder), "--prompts", "p.txt", "--out", str(out), "--score", "banana"])
    assert "invalid choice: 'banana' (choose from" in capsys.readouterr().err and not out.exists()


def stored_folder(out, per_image="all"):
    """A maps folder written by hand with maps_store's writers: three images, two shards (the second image of
    the key order alone in shard 1), targets "x" and "y"; image i's maps are i + 1 everywhere."""
    keys = ["a/one.png", "b/two.png", "c/three.png"]
    sizes = [(32, 32, False), (16, 32, False), (32, 32, True)]
    shards = [[[0, 2]], [[1]]]
    images = maps_store.image_entries(keys, [1, 0, 1], sizes, (16, 16), shards)
    settings = {"targets": {"per_image": per_image}}
    index = maps_store.new_index(out, settings, ["x", "y"], images, shards, {})
    maps_store.write_targets(out, torch.eye(2))
    count = 1 if per_image == "own" else 2
    for j, shard in enumerate(shards):
        tensors = {}
        for batch in shard:
            maps = torch.stack([torch.full((count, *images[i]["grid"]), i + 1.0) for i in batch])
            tensors.update(maps_store.shard_tensors(batch, maps, maps.mean(dim=(2, 3))))
        maps_store.write_shard(out, j, tensors)
    maps_store.write_index(out, {**index, "complete": True})
    return keys


def test_dataset_maps_is_a_mapping_read_shard_by_shard(tmp_path):
    keys = stored_folder(tmp_path / "maps")
    maps = DatasetMaps(tmp_path / "maps")
    assert isinstance(maps, Mapping) and len(maps) == 3
    assert "b/two.png" in maps and "nothing.png" not in maps and 0 not in maps
    # shard by shard, in key order within a shard: the same order for the keys, the values and the items
    order = ["a/one.png", "c/three.png", "b/two.png"]
    assert list(maps) == list(maps.keys()) == order and set(maps.keys()) == set(keys)
    assert [stored.key for stored in maps.values()] == order == [key for key, _ in maps.items()]
    assert len(maps.keys()) == len(maps.values()) == len(maps.items()) == 3
    for key, stored in maps.items():
        i = keys.index(key)
        assert stored.index == i and stored.prompts == ["x", "y"] and stored.label == [1, 0, 1][i]
        assert torch.equal(stored.maps, maps[key].maps) and torch.equal(maps[i].maps, stored.maps)
        assert stored.maps.shape == (2, *maps.images[i]["grid"]) and bool((stored.maps == i + 1).all())
    assert maps.get("nothing.png") is None and maps.get("nothing.png", "default") == "default"
    assert maps.get("c/three.png").key == "c/three.png" and maps[-1].key == "c/three.png"
    assert torch.equal(maps.targets(), torch.eye(2))
    opened = []
    real_open = maps._open
    maps._open = lambda shard: opened.append(shard) or real_open(shard)
    assert len(list(maps.values())) == 3 and opened == [0, 1]  # each shard file once
    # a reader equals itself only (comparing two would read every map) and stays hashable
    assert maps == maps and maps != DatasetMaps(tmp_path / "maps") and hash(maps) == hash(maps)
    with pytest.raises(KeyError, match="no image 'nothing.png'"):
        maps["nothing.png"]
    with pytest.raises(IndexError):
        maps[3]
    with pytest.raises(TypeError):
        maps[1.0]
    stored_folder(tmp_path / "own", per_image="own")
    own = DatasetMaps(tmp_path / "own")
    assert {key: stored.prompts for key, stored in own.items()} == {"a/one.png": ["y"], "c/three.png": ["y"],
                                                                    "b/two.png": ["x"]}


def test_the_reader_is_where_the_readme_names_it():
    from gradeclip_utils.explain_dataset import DatasetMaps as documented

    assert documented is DatasetMaps and documented.__module__ == "gradeclip_utils.maps_store"


def late_exif_png(path, width, height, orientation, seed=0):
    """An RGB PNG written chunk by chunk with its eXIf chunk after the pixel data (IHDR, IDAT, eXIf, IEND),
    where PIL finds the orientation only once it has decoded the pixels."""
    rows = np.random.default_rng(seed).integers(0, 255, (height, width * 3), dtype=np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\0\0") else tiff  # the chunk holds the bare TIFF structure
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"eXIf", tiff) + chunk(b"IEND", b""))
    return path


def test_a_png_with_its_exif_after_the_pixels_is_planned_as_it_is_loaded(tiny, tmp_path, monkeypatch):
    """The plan takes the orientation of an eXIf chunk after IDAT from the file's chunk headers (no
    decoding), so it agrees with the loader, which applies it as explain_image does."""
    from PIL import PngImagePlugin

    from gradeclip_utils.explain_dataset import _input_sizes

    folder = tmp_path / "data"
    folder.mkdir()
    for name, orientation in (("six.png", 6), ("eight.png", 8), ("three.png", 3)):
        late_exif_png(folder / name, 72, 40, orientation, seed=orientation)
    Image.fromarray(np.zeros((40, 72, 3), dtype=np.uint8)).save(folder / "plain.png")
    with Image.open(folder / "six.png") as image:
        assert "exif" not in image.info and image.size == (72, 40)  # PIL sees the chunk only after decoding
    keys = find_images(folder)
    with monkeypatch.context() as patched:  # planning reads headers only: decoding a PNG is an error here
        patched.setattr(PngImagePlugin.PngImageFile, "load", lambda self: pytest.fail("planning decoded a PNG"))
        sizes = _input_sizes(tiny, folder, keys, "native", 1600, show=False)
    assert dict(zip(keys, sizes)) == {"eight.png": (72, 40, False), "plain.png": (40, 72, False),
                                      "six.png": (72, 40, False), "three.png": (40, 72, False)}
    out = tmp_path / "maps"
    explain_dataset(tiny, folder, out, prompts=PROMPTS, batch_size=2, progress=False)
    maps = DatasetMaps(out)
    for stored in maps.values():
        reference = explain_image(tiny, folder / stored.key, PROMPTS)
        want = reference.raw[0]
        assert stored.maps.shape == want.shape, stored.key
        assert torch.allclose(stored.maps, want, rtol=0, atol=1e-5 * float(want.abs().max())), stored.key
        assert torch.allclose(stored.scores, reference.scores[0], atol=1e-6), stored.key
        assert tuple(stored.input_size) == tuple(np.asarray(reference.images[0]).shape[:2]), stored.key
    assert tuple(maps["six.png"].input_size) == (72, 40) == tuple(maps["eight.png"].input_size)


@pytest.mark.parametrize("classes", [None, "own"])
def test_clip_surgery_shards_take_every_prompt_as_the_class_set(tiny, tmp_path, classes):
    """CLIP Surgery's map depends on its class set: in a dataset run it is all the run's prompts (or
    classes), whichever of them a batch explains, so the shards equal explain_image against the whole set
    (its own class picked out with --classes own), whatever the batches."""
    folder = make_tree(tmp_path / "data")
    out = tmp_path / "maps"
    prompts = PROMPTS if classes is None else None
    explain_dataset(tiny, folder, out, prompts=prompts, classes=classes, templates="simple", method="clip_surgery",
                    batch_size=3, shard_size=4, max_patches=50, progress=False)
    maps = DatasetMaps(out)
    targets = maps.targets()
    for stored in maps.values():
        with pytest.warns(UserWarning) if maps.images[stored.index]["downscaled"] else contextlib.nullcontext():
            reference = explain_image(tiny, folder / stored.key, prompts if prompts is not None else targets,
                                      method="clip_surgery", max_patches=50)
        want = reference.raw[0] if classes is None else reference.raw[0][stored.label:stored.label + 1]
        assert torch.allclose(stored.maps, want, rtol=0, atol=1e-5 * float(want.abs().max())), stored.key


def test_a_stopped_run_resumes_from_its_shards(tiny, tmp_path):
    folder = make_tree(tmp_path / "data")
    # the largest pictures come last in the plan (batches grouped by input size, sizes ascending)
    broken = folder / "golden_retriever" / "big.png"
    Image.fromarray(np.zeros((120, 120, 3), dtype=np.uint8)).save(broken)
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])  # a readable header, truncated pixels
    out = tmp_path / "maps"
    options = dict(prompts=PROMPTS, batch_size=2, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="cannot read image .*big.png"):
        explain_dataset(tiny, folder, out, **options)
    written = sorted(p.name for p in (out / "shards").iterdir())
    assert written and not any(p.name.startswith(".") for p in (out / "shards").iterdir())  # no temporary files
    with pytest.raises(ValueError, match="incomplete run"):
        DatasetMaps(out)
    partial = DatasetMaps(out, allow_incomplete=True)
    last = partial.images[[e["key"] for e in partial.images].index("golden_retriever/big.png")]["shard"]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        partial["golden_retriever/big.png"]
    broken.write_bytes(whole)
    explain_dataset(tiny, folder, out, **options)
    run = json.loads((out / "run.json").read_text())
    done_before = sum(len(b) for shard in partial.index["shards"][:len(written)] for b in shard["batches"])
    assert run["already_done"] == done_before > 0 and run["computed"] == 9 - done_before
    assert f"shard-{last:05d}.safetensors" not in written
    fresh = tmp_path / "fresh"
    explain_dataset(tiny, folder, fresh, **options)
    for path in sorted((fresh / "shards").iterdir()):
        assert (out / "shards" / path.name).read_bytes() == path.read_bytes(), path.name
    with pytest.raises(ValueError, match="other settings"):
        explain_dataset(tiny, folder, out, **{**options, "batch_size": 1})
    explain_dataset(tiny, folder, out, **{**options, "batch_size": 1}, overwrite=True)
    assert json.loads((out / "run.json").read_text())["computed"] == 9


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    folder = make_tree(tmp_path / "data")
    with pytest.raises(ValueError, match="either prompts or classes"):
        explain_dataset(tiny, folder, tmp_path / "a", prompts=PROMPTS, classes="own")
    shutil.copy(folder / "tabby_cat" / "im1.png", folder / "loose.png")
    with pytest.raises(ValueError, match="inside a class folder; 1 lie directly"):
        explain_dataset(tiny, folder, tmp_path / "a", classes="own")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        explain_dataset(tiny, tmp_path / "nothing", tmp_path / "a", prompts=PROMPTS)
    (folder / "tabby_cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="1 unreadable images .*bad.png"):
        explain_dataset(tiny, folder, tmp_path / "a", prompts=PROMPTS)
    (folder / "tabby_cat" / "bad.png").unlink()
    explain_dataset(tiny, folder, tmp_path / "a", prompts=PROMPTS, progress=False)
    with pytest.raises(KeyError, match="no image 'missing.png'"):
        DatasetMaps(tmp_path / "a")["missing.png"]


def test_two_processes_write_the_files_of_one(tmp_path):
    from gradeclip_utils import cli

    folder = make_tree(tmp_path / "data")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    args = ["explain-dataset", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--batch-size", "2",
            "--shard-size", "3", "--device", "cpu"]
    threads = torch.get_num_threads()
    try:
        assert cli.main(args + ["--out", str(tmp_path / "one"), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = torchrun("-m", "gradeclip_utils.cli", *args, "--out", str(tmp_path / "two"), "--workers", "1",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads((tmp_path / "one/index.json").read_text()), json.loads((tmp_path / "two/index.json").read_text())
    assert two["distributed"]["world_size"] == 2 and sum(two["distributed"]["items_per_rank"]) == 8
    assert {k: v for k, v in one.items() if k != "distributed"} == {k: v for k, v in two.items() if k != "distributed"}
    names = sorted(os.listdir(tmp_path / "one/shards"))
    assert names == sorted(os.listdir(tmp_path / "two/shards")) and len(names) == len(one["shards"])
    for name in names + ["../targets.safetensors"]:
        assert (tmp_path / "one/shards" / name).read_bytes() == (tmp_path / "two/shards" / name).read_bytes(), name
    assert "8 images; 8 explained" in result.stdout and "on 2 processes" in result.stdout


def test_two_processes_cut_a_single_shard_so_that_both_work(tmp_path):
    """8 images at the default batch and shard sizes are one shard: on 2 processes it is cut into shards
    (and batches) of 4, one per rank, recorded so that one process with those sizes writes the same maps."""
    from gradeclip_utils import cli

    folder = make_tree(tmp_path / "data")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    args = ["explain-dataset", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--device", "cpu"]
    result = torchrun("-m", "gradeclip_utils.cli", *args, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two/index.json").read_text())
    assert two["distributed"] == {"world_size": 2, "items_per_rank": [4, 4], "batch_size": 4, "shard_size": 4}
    threads = torch.get_num_threads()
    try:
        assert cli.main(args + ["--out", str(tmp_path / "one"), "--threads", "1", "--batch-size", "4",
                                "--shard-size", "4"]) == 0
    finally:
        torch.set_num_threads(threads)
    one = json.loads((tmp_path / "one/index.json").read_text())
    assert one["shards"] == two["shards"] and one["images"] == two["images"]
    names = sorted(os.listdir(tmp_path / "one/shards"))
    assert names == sorted(os.listdir(tmp_path / "two/shards")) and len(names) == len(one["shards"]) >= 2
    for name in names:
        assert (tmp_path / "one/shards" / name).read_bytes() == (tmp_path / "two/shards" / name).read_bytes(), name
