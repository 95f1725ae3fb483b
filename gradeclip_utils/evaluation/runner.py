"""One evaluation run, phase by phase: ``evaluate(model, data, out, config)``.

``plan`` settles before any work what the run does (``Run``: its recorded settings, the methods, their
options, the batches); ``start`` checks the run it resumes (or clears the folder) and writes ``config.json``;
``time_methods`` measures the speed table; ``score_items`` runs every (batch, method) still to do and
merges the per-image rows; ``check_sanity`` runs the cascading randomisation; ``finish`` merges the sanity
rows and writes ``run.json``, the summary and the plots. On several processes every rank runs every phase
(see the package's docstring for who does what).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from ..jobs import distributed, files
from ..adapters import UnsupportedMethodError
from ..explain import check_score
from ..jobs.files import Journal
from ..methods import refusal
from ..methods.scores import (SCORES, DEFAULT_SCORE, default_score, is_classifier, model_scores, own_logit_scale,
                              score_name)
from ..metrics import cascading_randomisation, localisation_scores
from ..records import RunFolder, provenance
from . import methods as method_calls  # called through the module: replacing one replaces it in every phase
from .chunks import CURVE_PICTURES, CURVES, UNBOUNDED, call_options, plan_chunks, run_budget
from .config import EvalConfig, config_of
from .datasets import EvalItem, EvalSet
from .methods import default_methods, method_options, method_spec
from .plots import plot_results
from .protocols import (LOCALISATION, STEPS, AuthorsTargets, authors_faithfulness, authors_picture,
                        per_image_columns, project_faithfulness)
from .report import summarise
from .timing import measure_speed

#: what a run writes into its folder (``overwrite`` removes them)
OUTPUTS = ("per_image.csv", "timing.csv", "sanity.csv", "summary.md", "run.json")
SANITY_COLUMNS = ["method", "depth", "stage", "key", "spearman", "ssim"]


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 7) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _append_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rows appended to a (small) CSV file, rewritten atomically."""
    files.write_csv(path, columns, files.read_csv(path) + _rounded(rows))


def _batches(items: list[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Items sorted by class (stable) and cut into batches: few distinct targets per batch (the class
    scored, which is the class explained but with ``--target pred``, where it mostly is: sorting by it
    needs no prediction, so each rank predicts its own items only). These are also the work units of a
    run on several processes (batch i on rank i % N)."""
    ordered = sorted(items, key=lambda item: item.label)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def _load_batch(batch: list[EvalItem]) -> tuple[torch.Tensor, np.ndarray | None]:
    """Pixels (B, 3, H, W) and masks (B, H, W) (or None) of a batch (in a DataLoader worker when there are any)."""
    loaded = [item.load() for item in batch]
    masks = None if any(mask is None for _, mask in loaded) else np.stack([mask for _, mask in loaded])
    return torch.stack([pixels for pixels, _ in loaded]), masks


def _nothing_to_load(batch: list[EvalItem]) -> tuple[None, None]:
    return None, None


def _pending(mine, loads, done) -> Iterator[tuple[str, list[EvalItem], Any, Any]]:
    """(method, items, pixels, masks) of each (batch, method) still to do, the batch loaded once for all
    its methods; items already done are left out (with their pixels and masks)."""
    for (whole, names), (pixels, masks) in zip(mine, loads):
        for name in names:
            keep = [b for b, item in enumerate(whole) if (item.key, name) not in done]
            if len(keep) == len(whole):
                yield name, whole, pixels, masks
            else:
                yield (name, [whole[b] for b in keep], None if pixels is None else pixels[keep],
                       None if masks is None else masks[keep])


@dataclass
class Run:
    """One evaluation as ``plan`` settled it: what every phase reads.

    ``settings``: what ``config.json`` records (``EvalConfig.to_json``, with ``not_run``: the methods the
    model's family cannot run, each with its reason); ``methods``: the methods run, in order; ``options``:
    each method's options (the sanity check's too); ``previous``: the record of the run resumed, if any;
    ``batches``: the work units, ``unit`` items each (the batch size, or smaller so that every rank works);
    ``budget``: the memory budget in bytes, ``chunks``: the chunks planned from it (``chunks.py``).
    """

    model: Any
    data: EvalSet
    out: Path
    config: EvalConfig
    context: distributed.Context
    settings: dict[str, Any]
    methods: list[str]
    options: dict[str, dict[str, Any]]
    folder: RunFolder
    previous: dict[str, Any] | None
    batches: list[list[EvalItem]]
    unit: int
    budget: int
    chunks: dict[str, Any]

    @property
    def parts(self) -> Path:
        return self.out / files.PARTS

    def call_options(self, name: str) -> dict[str, Any]:
        """``name``'s options for a call: its own, its inner chunk, the budget and the images per call."""
        return call_options(self.options[name], self.chunks, name, self.budget)

    def order(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(item key, method) -> its place in the files one process writes (batch, method, item)."""
        return {(item.key, name): (b, m, p) for b, batch in enumerate(self.batches)
                for m, name in enumerate(self.methods) for p, item in enumerate(batch)}


def _refused(model, folder: RunFolder, previous: dict[str, Any] | None, settings: dict[str, Any],
             options: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The methods the model's family cannot run, with the reasons: as a resumed run's start found them, else
    asked of the family."""
    if previous is not None and folder.matches({k: v for k, v in previous.items() if k not in ("not_run", "chunks")},
                                               settings):
        return dict(previous.get("not_run", {}))
    return method_calls.unsupported_methods(model, options)


def _classifier_config(model, config: EvalConfig) -> EvalConfig:
    """``config`` for ``model``: for an image classifier its own default score (the logit) as the default score,
    which stands for it (so that the methods that explain no score run, and --score logit is the default run),
    and the authors' protocol refused (their scripts score a CLIP's zero-shot classifier)."""
    if not is_classifier(model.adapter):
        return config
    if config.protocol == "authors":
        raise ValueError(f"protocol='authors' reproduces the Grad-ECLIP authors' scripts, which explain and score a "
                         f"CLIP's zero-shot classifier; an image classifier ({model.family}) is evaluated under the "
                         "project's protocol")
    if config.score == default_score(model.adapter):
        return replace(config, score=DEFAULT_SCORE)
    return config


def plan(model, data: EvalSet, out: Path, config: EvalConfig, context: distributed.Context) -> Run:
    """What the run does, settled before any work: the settings it records, the methods (those the family
    cannot run left out and named, or refused when asked for by name), their options and the batches; ranks
    that hold other weights are refused; a score the model cannot give is refused before any work."""
    config = _classifier_config(model, config)
    check_score(model, score_name(model.adapter, config.score))
    out.mkdir(parents=True, exist_ok=True)
    requested = list(default_methods() if config.methods is None else config.methods)
    sanity_methods = list(config.sanity_methods or [])
    settings = config.to_json(dataset=data.name, provenance=provenance(model, weights=True),
                              classes=len(data.class_names))
    if model_scores(model.adapter) != SCORES:  # a model of its own scores (a classifier, SigLIP, BLIP): which one
        settings["explained_score"] = score_name(model.adapter, config.score)
    options = {name: method_options(name, settings, data.classifier)
               for name in dict.fromkeys(requested + sanity_methods)}
    folder = RunFolder(out, "config.json", what="a run", outputs=OUTPUTS)
    previous = folder.previous(config.overwrite)
    context.check_same("model weights", settings["weights"])
    # the chunks, before any work (the support probes run the model): a budget too small is an error here
    budget = run_budget(model, config.memory_budget, context)
    every = {name: method_options(name, settings, data.classifier) for name in default_methods()}
    runnable = [m for m in every if refusal(method_spec(m), model.adapter) is None]
    sizes = {"classes": len(data.class_names), "required": list(options),
             "bounds": config.chunks if config.chunks is not None else (previous or {}).get("chunks", {})}
    chunks = plan_chunks(model, config, every, runnable, budget=budget, **sizes)
    refused = _refused(model, folder, previous, settings, options)
    named = [m for m in requested if config.methods is not None and m in refused] + [
        m for m in sanity_methods if m in refused]
    if named:
        raise UnsupportedMethodError("; ".join(refused[m] for m in dict.fromkeys(named))
                                     + ". Leave them out of the methods (by default every method the family can "
                                     "run is evaluated).")
    if refused:
        settings["not_run"] = refused
        if context.is_main and config.progress:
            print("not run on this model: " + "; ".join(refused.values()), file=sys.stderr)
    # a run recorded before chunks were: resumed as it ran, with every chunk at its largest
    if not (previous is not None and "chunks" not in previous
            and chunks == plan_chunks(model, config, every, runnable, budget=UNBOUNDED, **sizes)):
        settings["chunks"] = chunks
    # fewer batches than ranks: cut finer so that every rank works (the size used is recorded)
    unit = distributed.unit_size(len(data.items), config.batch_size, context.world_size)
    return Run(model, data, out, config, context, settings, [m for m in requested if m not in refused], options,
               folder, previous, _batches(data.items, unit), unit, budget, chunks)


def start(run: Run) -> None:
    """On rank 0, before any rank reads what is done: refuse to resume a run made with other settings (or,
    with ``overwrite``, remove what an earlier run wrote), and write ``config.json`` with the distribution."""
    if run.previous is not None:  # read by plan, before anything was written
        run.folder.check(run.previous, run.settings)
    elif run.config.overwrite:
        run.folder.clear()
        Journal.remove(run.parts, "per_image")
        Journal.remove(run.parts, "sanity")
    record = run.context.record(distributed.items_per_rank([len(b) for b in run.batches], run.context.world_size),
                                **({"batch_size": run.unit} if run.unit != run.config.batch_size else {}))
    files.atomic_write_text(run.folder.record, json.dumps({**run.settings, "distributed": record}, indent=2)
                                  + "\n")


def time_methods(run: Run) -> None:
    """Each method's speed, side by side with one plain forward, for the methods not timed yet: on rank 0
    while the other ranks wait (so that their work does not disturb it)."""
    path = run.out / "timing.csv"
    if run.context.is_main:
        timed = {row["method"] for row in files.read_csv(path)}
        to_time = [m for m in run.methods if m not in timed]
        if to_time and run.config.timing_images > 0:
            pixels = torch.stack([item.load()[0] for item in run.data.items[:run.config.timing_images]])
            rows = measure_speed(run.model, pixels, run.data.classifier, to_time, run.options,
                                 repeats=run.config.timing_repeats, budget_seconds=run.config.timing_budget)
            _append_rows(path, rows, list(rows[0]))
    run.context.barrier()


class _ImageProgress:
    """The bar of the per-image phase: it counts images (an image when its last method is done), with the
    global rate in images per second."""

    def __init__(self, run: Run, mine: list[tuple[list[EvalItem], list[str]]], done: set[tuple[str, str]]) -> None:
        todo = sum(any((item.key, name) not in done for name in names) for batch, names in mine for item in batch)
        self.bar = run.context.progress(todo, desc="images", unit="image", disable=not run.config.progress)
        self.remaining = {item.key: sum((item.key, name) not in done for name in names)
                          for batch, names in mine for item in batch}

    def finished(self, items: Sequence[EvalItem]) -> None:
        complete = 0
        for item in items:
            self.remaining[item.key] -= 1
            complete += self.remaining[item.key] == 0
        if complete:
            self.bar.update(complete)


class _Scorer:
    """The per-image rows of one method on one batch, under the run's protocol."""

    def __init__(self, run: Run, mine: list[tuple[list[EvalItem], list[str]]]) -> None:
        self.run = run
        self.logit_scale = own_logit_scale(run.model.adapter)  # a CLIP's logit scale; 1 for a classifier
        authors = run.config.protocol == "authors"
        self.targets = AuthorsTargets(run.model, run.data.class_names, run.methods) if authors and mine else None
        self.pictures: dict[str, Any] = {}

    def rows(self, name: str, batch: list[EvalItem], pixels: Any, masks: Any) -> list[dict[str, Any]]:
        data = self.run.data
        rows = [{"key": item.key, "label": item.label, "target": item.explained,
                 "prompt": data.class_names[item.explained], "method": name} for item in batch]
        if self.run.config.protocol == "authors":
            self._authors(name, batch, rows)
        else:
            self._project(name, batch, pixels, masks, rows)
        return rows

    def _authors(self, name: str, batch: list[EvalItem], rows: list[dict[str, Any]]) -> None:
        run = self.run
        if not run.config.faithfulness:
            return
        if set(self.pictures) != {item.key for item in batch}:  # each batch's pictures are decoded once
            self.pictures = {item.key: authors_picture(item) for item in batch}
        for item, row in zip(batch, rows):
            authors_faithfulness(run.model, name, item, self.pictures[item.key], run.data.classifier, row,
                                 run.call_options(name), seed=run.config.seed, logit_scale=self.logit_scale,
                                 steps=STEPS, targets=self.targets,
                                 batch_size=run.chunks.get(CURVES, CURVE_PICTURES))

    def _project(self, name: str, batch: list[EvalItem], pixels: torch.Tensor, masks: np.ndarray | None,
                 rows: list[dict[str, Any]]) -> None:
        run, config = self.run, self.run.config
        extra = {"keys": [item.key for item in batch]} if method_spec(name).keyed else {}
        maps = method_calls.batch_maps(run.model, name, pixels, [item.explained for item in batch],
                                       run.data.classifier, {**run.call_options(name), **extra})
        if run.data.has_masks:  # the project's protocol localises where there are masks
            scores = localisation_scores(maps, masks, tolerance=config.tolerance)
            for b, row in enumerate(rows):
                row.update({metric: float(scores[metric][b]) for metric in LOCALISATION})
        if config.faithfulness:
            project_faithfulness(run.model, pixels, maps, batch, run.data.classifier, rows, seed=config.seed,
                                 tie_seeds=config.tie_seeds, logit_scale=self.logit_scale, steps=STEPS,
                                 score=config.score, batch_size=run.chunks.get(CURVES, CURVE_PICTURES))


def score_items(run: Run) -> list[dict[str, float]]:
    """The per-image metrics of this rank's batches, appended to its part file as they finish; once every
    rank has finished, rank 0 merges them into ``per_image.csv``. Every rank's phase record (results
    computed, wall and CPU seconds), for ``run.json``."""
    context = run.context
    per_image = run.out / "per_image.csv"
    written = files.read_csv(per_image) + Journal.read(run.parts, "per_image")
    done = {(row["key"], row["method"]) for row in written}
    mine = [(batch, [name for name in run.methods if any((item.key, name) not in done for item in batch)])
            for _, batch in context.shard(run.batches)]
    mine = [(batch, names) for batch, names in mine if names]
    journal = Journal(run.parts, "per_image", context.rank)
    started, cpu_started, computed = time.perf_counter(), time.process_time(), 0
    progress = _ImageProgress(run, mine, done)
    # the authors' protocol preprocesses each native picture itself: nothing to load ahead
    loader = _load_batch if run.config.protocol == "project" else _nothing_to_load
    scorer = _Scorer(run, mine)
    loads = distributed.load_units([batch for batch, _ in mine], loader, workers=run.config.workers,
                                   device=run.model.device)
    for name, batch, pixels, masks in _pending(mine, loads, done):
        progress.bar.note(name)
        journal.append(_rounded(scorer.rows(name, batch, pixels, masks)))
        computed += len(batch)
        progress.finished(batch)
    phase = context.gather({"computed": computed, "seconds": time.perf_counter() - started,
                            "cpu_seconds": time.process_time() - cpu_started})
    progress.bar.close()
    if context.is_main:  # every rank has finished its share: merge, in the order one process writes
        order = run.order()
        columns = per_image_columns(localise=run.data.has_masks and run.config.protocol == "project",
                                    faithfulness=run.config.faithfulness, tie_seeds=run.config.tie_seeds,
                                    score=run.config.score)
        files.merge_table(per_image, columns, Journal.read(run.parts, "per_image"),
                                identity=lambda row: (row["key"], row["method"]),
                                order=lambda row: order.get((row["key"], row["method"])), required=set(order))
        Journal.remove(run.parts, "per_image")
    return phase


def _sanity_rows(run: Run, name: str, chosen: list[EvalItem], pixels: torch.Tensor, labels: list[int],
                 column: list[int]) -> list[dict[str, Any]]:
    """One method's cascading randomisation on the chosen images, each map for a class of ``labels``
    (``column``: each image's): a row per stage and image."""
    targets, options = method_calls.explained_targets(run.data.classifier, labels, run.call_options(name))
    fn = lambda m, p, t: method_calls.run_method(m, name, p, t, options)  # noqa: E731
    result = cascading_randomisation(run.model, pixels, targets, fn, seed=run.config.seed)
    rows = []
    for depth, (stage, rho, similarity) in enumerate(zip(result.stages, result.spearman, result.ssim)):
        for b, item in enumerate(chosen):
            rows.append({"method": name, "depth": depth, "stage": stage, "key": item.key,
                         "spearman": float(rho[b, column[b]]), "ssim": float(similarity[b, column[b]])})
    return rows


def check_sanity(run: Run) -> list[str]:
    """The cascading randomisation sanity check of the methods not checked yet, method i of the list on rank
    i % N, each appended to this rank's part file; the list (the sanity methods, the references left out)."""
    config, context = run.config, run.context
    checked_all = [m for m in (config.sanity_methods if config.sanity_methods is not None else run.methods)
                   if not method_spec(m).reference]
    written = files.read_csv(run.out / "sanity.csv") + Journal.read(run.parts, "sanity")
    checked = {row["method"] for row in written}
    mine = [name for _, name in context.shard(checked_all) if name not in checked]
    journal = Journal(run.parts, "sanity", context.rank)
    if config.sanity_images > 0 and mine:
        chosen = run.data.items[:config.sanity_images]
        pixels = torch.stack([item.load()[0] for item in chosen]).to(run.model.device)
        labels = sorted({item.explained for item in chosen})
        column = [labels.index(item.explained) for item in chosen]
        for name in tqdm(mine, desc="sanity check", disable=not (config.progress and context.is_main)):
            journal.append(_rounded(_sanity_rows(run, name, chosen, pixels, labels, column)))
    context.gather(None)
    return checked_all


def finish(run: Run, phase: list[dict[str, float]], checked_all: list[str]) -> dict[str, Any]:
    """On rank 0: the sanity rows merged into ``sanity.csv``, ``run.json``, ``summary.md`` and the plots; the
    summary (every rank's, once rank 0 has written the files)."""
    context, sanity_path = run.context, run.out / "sanity.csv"
    if context.is_main:
        sanity_rows = Journal.read(run.parts, "sanity")
        if sanity_rows or sanity_path.exists():
            rank = {name: m for m, name in enumerate(checked_all)}
            files.merge_table(sanity_path, SANITY_COLUMNS, sanity_rows,
                                    identity=lambda row: (row["method"], row["depth"], row["key"]),
                                    order=lambda row: (rank[row["method"]],) if row["method"] in rank else None,
                                    required=set(checked_all) if run.config.sanity_images > 0 else set(),
                                    required_key=lambda row: row["method"])
        Journal.remove(run.parts, "sanity")
        run.folder.write_run(world_size=context.world_size, device=run.model.device, unit="results",
                             count=len(run.order()), phases=phase)
        summary = summarise(run.out, run.data, run.settings, command=run.config.command, methods=run.methods)
        files.atomic_write_text(run.out / "summary.md", summary["markdown"])
        plot_results(run.out, summary)
    context.barrier()
    if not context.is_main:
        summary = summarise(run.out, run.data, run.settings, command=run.config.command, methods=run.methods)
    return summary


def evaluate(model, data: EvalSet, out: str | Path, config: EvalConfig | None = None, *,
             context: distributed.Context | None = None, **settings: Any) -> dict[str, Any]:
    """Run every method on every item of ``data``, write the results into ``out`` and return the summary.

    ``config``: the run's ``EvalConfig`` (default: its defaults); ``settings``: any of its fields as
    keywords (``methods=["grad_eclip", "random"], rise_masks=300``, ...), set on ``config``. Every value is
    checked before any work.

    ``protocol``: "project" (this project's deletion and insertion on the preprocessed pixels, ties by
    seeded random permutations, repeated over ``tie_seeds`` tie seeds to show how much the order of ties
    moves an AUC) or "authors" (the Grad-ECLIP authors' scripts exactly, see ``authors_faithfulness``;
    no localisation). ``timing_budget``: seconds of timed runs per fast method and prompt count (see
    ``measure_speed``). Resumes from ``out`` when it holds a run with the same settings (items already
    done are kept); ``overwrite`` starts afresh. ``workers``: DataLoader worker processes that load the
    images. ``context``: this process's place in a run on several processes (``distributed.init``); every
    rank calls ``evaluate`` with the same arguments, and each returns the summary of the merged run.

    ``methods``: None for every method the model's family can run (``default_methods()``; those its adapter
    refuses, e.g. M2IB on a ResNet, are left out and named in the config and the summary); a method
    named here that the family cannot run is an error before any work. ``sanity_methods`` likewise.
    """
    config = config_of(config, settings)
    context = context or distributed.Context(device=model.device)
    run = plan(model, data, Path(out), config, context)
    context.on_main(lambda: start(run))
    time_methods(run)
    phase = score_items(run)
    checked = check_sanity(run)
    return finish(run, phase, checked)


def _keyword_signature() -> inspect.Signature:
    """``evaluate``'s signature with ``EvalConfig``'s fields as its keywords, for ``help()`` and notebooks."""
    signature = inspect.signature(evaluate)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                for f in fields(EvalConfig)]
    return signature.replace(parameters=own + keywords)


evaluate.__signature__ = _keyword_signature()  # type: ignore[attr-defined]
