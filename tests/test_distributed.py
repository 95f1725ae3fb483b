"""Scale-out machinery (sharding, part files, merging, atomic writes) and the evaluation under torchrun:
two gloo processes on the CPU started by the tests give the single process's files; a rank killed midway
resumes to the same files; a failing rank fails the run with its error."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gradeclip_utils import evaluation as ev
from gradeclip_utils.evaluation.runner import _batches
from gradeclip_utils.cli import alias_main
from gradeclip_utils.records import same_settings
from gradeclip_utils.jobs import distributed, files
from gradeclip_utils.jobs.distributed import Context
from gradeclip_utils.jobs.files import Journal
from launch import ROOT, torchrun
from spread import assert_within_spread


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shard_assignment_covers_every_item_exactly_once(world_size):
    from gradeclip_utils.explain_dataset import _plan

    rng = np.random.default_rng(world_size)
    items = [ev.EvalItem(key=f"item-{i}", label=int(rng.integers(0, 5)), load=lambda: None) for i in range(23)]
    batches = _batches(items, 4)
    assert batches == _batches(items, 4) and [len(b) for b in batches] == [4, 4, 4, 4, 4, 3]
    owned = [[item.key for _, batch in Context(rank=r, world_size=world_size).shard(batches) for item in batch]
             for r in range(world_size)]
    flat = [key for keys in owned for key in keys]
    assert sorted(flat) == sorted(item.key for item in items) and len(flat) == len(set(flat)) == 23
    # unit i on rank i % N, whatever N (the units themselves do not depend on N)
    for r in range(world_size):
        expected = [item.key for i, batch in enumerate(batches) if i % world_size == r for item in batch]
        assert owned[r] == expected
    assert distributed.items_per_rank([len(b) for b in batches], world_size) == [len(k) for k in owned]

    sizes = [(16 * (1 + i % 3), 16 * (1 + i % 2), False) for i in range(17)]  # images on 6 patch grids
    shards = _plan(sizes, batch_size=2, shard_size=3)
    assert all(len({sizes[i][:2] for i in batch}) == 1 for shard in shards for batch in shard)
    assert all(sum(map(len, shard)) <= 3 for shard in shards)
    images = [i for r in range(world_size) for _, shard in Context(rank=r, world_size=world_size).shard(shards)
              for batch in shard for i in batch]
    assert sorted(images) == list(range(17)) and len(images) == 17


def test_shard_indices_refuse_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        distributed.shard_indices(5, 2, 2)


# ------------------------------------------------------------------------------------- part files
def test_journal_never_reads_a_half_written_record(tmp_path):
    journal = Journal(tmp_path, "per_image", 1)
    journal.append([{"key": "a", "value": 0.5}])
    journal.append([{"key": "b", "value": float("nan")}, {"key": "c", "value": 2}])
    rows = Journal.read(tmp_path, "per_image")
    assert [r["key"] for r in rows] == ["a", "b", "c"] and np.isnan(rows[1]["value"]) and rows[2]["value"] == 2
    data = journal.path.read_bytes()
    # a kill in the middle of the third write: the record is cut short (no newline, the CRC cannot match)
    journal.append([{"key": "d", "value": 1.0}])
    full = journal.path.read_bytes()
    journal.path.write_bytes(full[:len(data) + (len(full) - len(data)) // 2])
    assert [r["key"] for r in Journal.read(tmp_path, "per_image")] == ["a", "b", "c"]
    # appending again first cuts off the torn tail; the new record starts on its own line
    again = Journal(tmp_path, "per_image", 1)
    again.append([{"key": "e", "value": 3.0}])
    assert [r["key"] for r in Journal.read(tmp_path, "per_image")] == ["a", "b", "c", "e"]
    assert journal.path.read_bytes().startswith(data) and journal.path.read_bytes().count(b"\n") == 3
    # a flipped byte inside a complete line fails its CRC: that record alone is dropped
    lines = journal.path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"a"', b'"x"')
    journal.path.write_bytes(b"\n".join(lines))
    assert [r["key"] for r in Journal.read(tmp_path, "per_image")] == ["b", "c", "e"]
    # every rank's file, by rank
    Journal(tmp_path, "per_image", 0).append([{"key": "z"}])
    assert [r["key"] for r in Journal.read(tmp_path, "per_image")] == ["z", "b", "c", "e"]
    Journal.remove(tmp_path, "per_image")
    assert Journal.read(tmp_path, "per_image") == []


def test_merge_table_orders_dedups_and_writes_what_csv_writes(tmp_path):
    path = tmp_path / "table.csv"
    columns = ["key", "method", "value"]
    files.write_csv(path, columns, [{"key": "old", "method": "m", "value": "1.5"},
                                    {"key": "b", "method": "m", "value": "0.25"}])
    parts = [{"key": "c", "method": "m", "value": 0.125}, {"key": "b", "method": "m", "value": 9.0},  # duplicate
             {"key": "a", "method": "m", "value": 1e-07}, {"key": "a", "method": "n", "value": -2}]
    order = {("a", "m"): (0, 0), ("a", "n"): (0, 1), ("b", "m"): (1, 0), ("c", "m"): (2, 0)}
    merged = files.merge_table(path, columns, parts, identity=lambda r: (r["key"], r["method"]),
                               order=lambda r: order.get((r["key"], r["method"])))
    expected = [{"key": "a", "method": "m", "value": 1e-07}, {"key": "a", "method": "n", "value": -2},
                {"key": "b", "method": "m", "value": "0.25"}, {"key": "c", "method": "m", "value": 0.125},
                {"key": "old", "method": "m", "value": "1.5"}]  # not asked for by the run: last
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(expected)
    assert path.read_bytes().decode() == buffer.getvalue()
    assert [r["key"] for r in merged] == ["a", "a", "b", "c", "old"] and merged[0]["value"] == "1e-07"
    # a result the run asked for that no part file holds: an error, and the file stays as it was
    written = path.read_bytes()
    with pytest.raises(RuntimeError, match="1 of 5 results are missing"):
        files.merge_table(path, columns, [], identity=lambda r: (r["key"], r["method"]), order=lambda r: None,
                          required={*order, ("d", "m")})
    assert path.read_bytes() == written


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "config.json"
    files.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_same_settings_ignore_only_the_distribution_and_the_device_index():
    a = {"model": {"model": "x", "device": "cuda"}, "seed": 0}
    b = {"model": {"model": "x", "device": "cuda:0"}, "seed": 0, "distributed": {"world_size": 2}}
    assert same_settings(a, b)
    assert not same_settings(a, {**b, "seed": 1})
    assert not same_settings(a, {**b, "model": {"model": "x", "device": "cpu"}})


def test_the_names_of_the_former_module_stay_importable():
    """``gradeclip_utils.distributed`` re-exports what it held before ``jobs`` took it over: the same objects."""
    import gradeclip_utils.distributed as former
    from gradeclip_utils import records

    for name in former.__all__:
        home = next(module for module in (records, distributed, files) if hasattr(module, name))
        assert getattr(former, name) is getattr(home, name), name
    assert {"Context", "Journal", "init", "merge_table", "same_settings", "unit_size", "PARTS"} <= set(former.__all__)


def test_one_process_without_a_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.init("cpu")
    assert (context.rank, context.world_size, context.distributed, context.device) == (0, 1, False, torch.device("cpu"))
    assert context.gather(3) == [3] and context.on_main(lambda: 5) == 5
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 without RANK"):
        distributed.init("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        distributed.init("cpu")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="names one device for every rank"):
        distributed.init("cuda:1")


class OtherWeightsOnRank1(Context):
    """Rank 0 of two whose peer reports other values (as random initial weights give)."""

    def gather(self, value):
        return [value, "something else"]


def test_ranks_with_different_weights_are_refused(tiny, tmp_path):
    from gradeclip_utils.explain_dataset import explain_dataset

    context = OtherWeightsOnRank1(rank=0, world_size=2)
    with pytest.raises(ValueError, match="ranks hold different model weights .*ranks \\[1\\] differ"):
        ev.evaluate(tiny, ev.synthetic_set(tiny, 2), tmp_path / "eval", methods=["grad_eclip"], context=context)
    assert not (tmp_path / "eval" / "config.json").exists()
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match="ranks hold different model weights"):
        explain_dataset(tiny, tmp_path / "images", tmp_path / "maps", prompts=["a"], context=context)
    assert not (tmp_path / "maps").exists()


# ------------------------------------------------------------------------------- torchrun runs
ARGS = ["-n", "4", "--methods", "grad_eclip,rise,m2ib,random", "--rise-masks", "16", "--m2ib-steps", "2",
        "--m2ib-samples", "2", "--sanity-images", "2", "--sanity-methods", "grad_eclip,rise", "--timing-images", "0",
        "--batch-size", "2", "--threads", "1", "--device", "cpu", "--out", "run"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run (in this process, one thread, as each torchrun worker runs)."""
    folder = tmp_path_factory.mktemp("single")
    threads, here = torch.get_num_threads(), os.getcwd()
    os.chdir(folder)
    try:
        alias_main("evaluate", ARGS)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return folder / "run"


def assert_same_results(got: Path, want: Path) -> None:
    a, b = read(got / "per_image.csv"), read(want / "per_image.csv")
    assert list(a[0]) == list(b[0]) and len(a) == len(b) == 4 * 4
    assert [(r["key"], r["method"]) for r in a] == [(r["key"], r["method"]) for r in b]
    for x, y in zip(a, b):
        numbers = [k for k in x if k not in ("key", "prompt", "method")]
        assert np.allclose([float(x[k]) for k in numbers], [float(y[k]) for k in numbers], atol=1e-6, rtol=0,
                           equal_nan=True), (x["key"], x["method"])
    sa, sb = read(got / "sanity.csv"), read(want / "sanity.csv")
    assert [(r["method"], r["depth"], r["key"]) for r in sa] == [(r["method"], r["depth"], r["key"]) for r in sb]
    assert np.allclose([float(r["spearman"]) for r in sa], [float(r["spearman"]) for r in sb], atol=1e-6)
    assert not (got / "parts").exists() or not any((got / "parts").iterdir()), "part files left after the merge"


def test_two_gloo_processes_write_the_single_process_files(reference, tmp_path):
    result = torchrun("-m", "gradeclip_utils.evaluate", *ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert_same_results(run, reference)
    for name in ("per_image.csv", "sanity.csv", "summary.md", "curves_deletion.png", "curves_insertion.png",
                 "auc_bars.png", "sanity.png"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    config, single = json.loads((run / "config.json").read_text()), json.loads((reference / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "items_per_rank": [2, 2]}  # 2 batches of 2, one each
    assert single["distributed"] == {"world_size": 1, "items_per_rank": [4]}
    assert same_settings(config, single)
    assert json.loads((run / "run.json").read_text())["computed"] == 16
    assert "(2 processes)" in result.stderr  # the one progress bar, on rank 0, counts both ranks


def test_a_rank_killed_midway_resumes_to_the_same_files(reference, tmp_path):
    killed = torchrun(str(ROOT / "tests" / "dist_fault.py"), "gradeclip_utils.evaluate", *ARGS, "--workers", "1",
                      cwd=tmp_path, extra_env={"GRADECLIP_TEST_KILL_RANK": "1"})
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    run = tmp_path / "run"
    assert not (run / "per_image.csv").exists() and not (run / "summary.md").exists()
    kept = Journal.read(run / "parts", "per_image")
    assert len(Journal._records(run / "parts" / "per_image.rank1.jsonl")[0]) == 1  # its first record, then killed
    again = torchrun("-m", "gradeclip_utils.evaluate", *ARGS, "--workers", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_results(run, reference)
    assert (run / "per_image.csv").read_bytes() == (reference / "per_image.csv").read_bytes()
    stats = json.loads((run / "run.json").read_text())
    assert stats["already_done"] == len(kept) > 0 and stats["computed"] == 16 - len(kept)


def test_a_failing_rank_fails_the_run_with_its_error(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    prompts = ["a blue square", "a green triangle", "a red circle", "a yellow star"]  # sorted: labels 0..3
    with open(tmp_path / "prompts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt"])
        for i, prompt in enumerate(prompts):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
            writer.writerow([f"im{i}.png", prompt])
    (tmp_path / "im1.png").write_bytes(b"not an image")  # batch 1 (batch size 1): rank 1's
    result = torchrun("-m", "gradeclip_utils.evaluate", "--dataset", "folder", "--data", "prompts.csv",
                      "--methods", "grad_eclip", "--no-faithfulness", "--sanity-images", "0", "--timing-images", "0",
                      "--batch-size", "1", "--device", "cpu", "--out", "run", cwd=tmp_path)
    assert result.returncode != 0
    assert "cannot read image" in result.stderr and "im1.png" in result.stderr
    assert "rank      : 1 (local_rank: 1)" in result.stderr.split("Root Cause")[1]  # torchrun names the rank
    recorded = (tmp_path / "run" / "parts" / "error.rank1.txt").read_text()
    assert "cannot read image" in recorded and "im1.png" in recorded
    assert not (tmp_path / "run" / "per_image.csv").exists() and not (tmp_path / "run" / "summary.md").exists()


# ------------------------------------------------------------------- fewer batches than ranks
@pytest.mark.parametrize("count, size, world_size, want", [
    (12, 16, 2, 6), (12, 16, 1, 16), (40, 16, 2, 16), (17, 16, 2, 16), (3, 16, 2, 2), (1, 16, 2, 1),
    (12, 16, 5, 2), (16, 16, 2, 8), (32, 16, 2, 16)])
def test_units_are_cut_finer_when_there_are_fewer_than_ranks(count, size, world_size, want):
    assert distributed.unit_size(count, size, world_size) == want


def test_every_rank_works_whenever_there_are_enough_items():
    from hypothesis import given, strategies as st

    @given(st.integers(1, 300), st.integers(1, 64), st.integers(1, 9))
    def check(count, size, world_size):
        unit = distributed.unit_size(count, size, world_size)
        sizes = [min(unit, count - i) for i in range(0, count, unit)]
        per_rank = distributed.items_per_rank(sizes, world_size)
        assert sum(per_rank) == count and 1 <= unit <= size
        if world_size == 1 or math.ceil(count / size) >= world_size:
            assert unit == size  # enough units already: the batches one process runs
        else:
            assert sum(n > 0 for n in per_rank) == min(count, world_size)  # every rank with an item works

    check()


FEW = ["-n", "6", "--methods", "grad_eclip,rise", "--rise-masks", "16", "--sanity-images", "0",
       "--timing-images", "0", "--threads", "1", "--device", "cpu", "--out", "run"]


def _single(folder: Path, args: list[str]) -> Path:
    threads, here = torch.get_num_threads(), os.getcwd()
    folder.mkdir()
    os.chdir(folder)
    try:
        alias_main("evaluate", args)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return folder / "run"


def test_a_run_with_fewer_batches_than_ranks_busies_every_rank(tmp_path):
    """6 items at the default batch size (16) on 2 processes: batches of 3, one per rank. The merged files
    equal one process's with those batches, and the default single-process run (one batch of 6) within the
    tolerance stated for a change of batch size (docs/reproducibility.md)."""
    (tmp_path / "two").mkdir()
    result = torchrun("-m", "gradeclip_utils.evaluate", *FEW, cwd=tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "two" / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "items_per_rank": [3, 3], "batch_size": 3}
    assert config["batch_size"] == 16  # what was asked; the cut is the distributed record's
    finer = _single(tmp_path / "finer", FEW + ["--batch-size", "3"])
    assert json.loads((finer / "config.json").read_text())["distributed"] == {"world_size": 1, "items_per_rank": [6]}
    assert (run / "per_image.csv").read_bytes() == (finer / "per_image.csv").read_bytes()
    default = _single(tmp_path / "default", FEW)
    assert json.loads((default / "config.json").read_text())["distributed"] == {"world_size": 1,
                                                                                "items_per_rank": [6]}
    assert_within_spread(read(run / "per_image.csv"), read(default / "per_image.csv"))
