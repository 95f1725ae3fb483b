"""The settings of one evaluation run as one typed object, validated once: ``EvalConfig``.

``evaluate(model, data, out, config)`` takes one (or builds it from its keywords, the same names), the
command line builds one from its options, and ``to_json`` gives the settings the run's ``config.json``
records (with the data set, the model and the class count), the keys earlier runs wrote, so that a run
resumes and its settings compare (``records.RunFolder``) as before.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

from ..budget import check_budget
from ..config import check_choice
from ..methods.scores import DEFAULT_SCORE, SCORES
from ..methods import method_specs
from .methods import RANDOM, default_methods

PROTOCOLS = ("project", "authors")
#: the explained scores an evaluation takes (``methods/scores.py``); the contrast is refused (``CONTRAST``)
EVAL_SCORES: tuple[str, ...] = tuple(s for s in SCORES if s != "contrast")
CONTRAST = ("an evaluation cannot explain score='contrast': each map explains its image's class (a row of the "
            "zero-shot classifier), and a contrast S(a) - S(b) needs a second class b per image, which the data sets "
            "do not define; evaluate the cosine, the logit or the probability")

#: metadata of the fields that say how a run goes, not what it measures: config.json leaves them out
HOW = {"recorded": False}


def _integer(name: str, value: Any, least: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if least is not None and value < least:
        raise ValueError(f"{name} must be at least {least}, got {value!r}")
    return int(value)


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a number of at least 0, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _chunks(value: Any) -> dict[str, Any] | None:
    """None, or chunk sizes as ``config.json`` records them: a name -> a size, or -> {what: size}, sizes >= 1."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"chunks must be None or a mapping of names to chunk sizes, got {value!r}")
    chunks: dict[str, Any] = {}
    for name, sizes in value.items():
        if isinstance(sizes, Mapping):
            chunks[str(name)] = {str(k): _integer(f"chunks[{name!r}][{k!r}]", v, 1) for k, v in sizes.items()}
        else:
            chunks[str(name)] = _integer(f"chunks[{name!r}]", sizes, 1)
    return chunks


def _names(name: str, value: Any) -> tuple[str, ...] | None:
    """None, or a sequence of method names as a tuple (a lone string is refused: it is not a list of names)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be None or a list of method names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation run does (``evaluate``'s keywords, the command's options).

    Recorded in ``config.json`` (a run resumes only with the same values):

    - ``tolerance``: the pointing game's tolerance in pixels of the model's input;
    - ``batch_size``: images explained together, also the work unit of a run on several processes;
    - ``rise_masks``, ``rise_centre``: RISE's masks per image and whether its sum is centred;
    - ``m2ib_steps``, ``m2ib_samples``: M2IB's optimisation steps and noise samples per step;
    - ``seed``: of the random reference, RISE's masks, M2IB's noise, the tie orders and the sanity check;
    - ``faithfulness``: whether deletion and insertion are run;
    - ``sanity_images``, ``timing_images``: images of the sanity check and of the speed measurement (0 skips);
    - ``timing_repeats``, ``timing_budget``: timed runs per method at least, and seconds of runs per fast
      method and prompt count (``timing.measure_speed``);
    - ``protocol``: one of ``PROTOCOLS``, "project" or "authors" (the Grad-ECLIP authors' scripts);
    - ``tie_seeds``: tie orders of the project's deletion and insertion (one under the authors' protocol,
      which has no tie order of its own: a config made with more holds one);
    - ``score``: what the maps explain, one of ``EVAL_SCORES`` (``methods/scores.py``): "cosine" (default),
      "logit" or "probability" (each image's class's zero-shot probability among every class of the
      classifier). The methods that cannot explain it are left out and named, like those the model's
      family cannot run; deletion and insertion also report its curves. Recorded only away from the
      default (runs recorded before it existed resume). The contrast is refused (``CONTRAST``), and so is
      another score than the cosine under the authors' protocol (their scripts explain the cosine).

    How the run goes (not recorded): ``methods`` and ``sanity_methods`` (None: every method the model's
    family can run, ``default_methods()``; the sanity check leaves out the references), the ``command``
    the summary quotes, ``overwrite`` (start afresh), ``progress`` (bars on stderr) and ``workers``
    (DataLoader processes that load the images). ``memory_budget``: bytes the work of one call may hold
    (None: half the memory free on the model's device, at most 1 GiB; the least of the ranks'), from which
    the run plans its chunks before any work; ``chunks``: the most each chunk may be, as a run's
    ``config.json`` records the chunks it used (``{"curves": 128, "game": {"images": 16, "chunk": 16}, ...}``):
    passing a run's record back repeats its chunks. The chunks used are recorded, not these two.

    Every value is checked when the config is made: a ValueError names the field, what it allows and the
    value given (an unknown method name lists the methods there are).
    """

    tolerance: float = 4.0
    batch_size: int = 16
    rise_masks: int = 2000
    rise_centre: bool = True
    m2ib_steps: int = 10
    m2ib_samples: int = 10
    seed: int = 0
    faithfulness: bool = True
    sanity_images: int = 8
    timing_images: int = 4
    timing_repeats: int = 5
    protocol: str = "project"
    tie_seeds: int = 3
    timing_budget: float = 1.0
    score: str = DEFAULT_SCORE
    methods: Sequence[str] | None = field(default=None, metadata=HOW)
    sanity_methods: Sequence[str] | None = field(default=None, metadata=HOW)
    command: str = field(default="", metadata=HOW)
    overwrite: bool = field(default=False, metadata=HOW)
    progress: bool = field(default=True, metadata=HOW)
    workers: int = field(default=0, metadata=HOW)
    memory_budget: int | None = field(default=None, metadata=HOW)
    chunks: Mapping[str, Any] | None = field(default=None, metadata=HOW)

    def __post_init__(self) -> None:
        check_choice("protocol", self.protocol, PROTOCOLS)
        if self.score == "contrast":
            raise ValueError(CONTRAST)
        check_choice("score", self.score, EVAL_SCORES)
        if self.score != DEFAULT_SCORE and self.protocol == "authors":
            raise ValueError(f"score={self.score!r} does not fit protocol='authors', which reproduces the Grad-ECLIP "
                             "authors' scripts: they explain the cosine (the classifier's row); use the project's "
                             "protocol for another score")
        _number("tolerance", self.tolerance)
        _number("timing_budget", self.timing_budget)
        least = {"batch_size": 1, "rise_masks": 1, "m2ib_steps": 1, "m2ib_samples": 1, "seed": None,
                 "sanity_images": 0, "timing_images": 0, "timing_repeats": 1, "tie_seeds": 1, "workers": 0}
        for name, bound in least.items():
            object.__setattr__(self, name, _integer(name, getattr(self, name), bound))
        for name in ("rise_centre", "faithfulness", "overwrite", "progress"):
            _flag(name, getattr(self, name))
        if not isinstance(self.command, str):
            raise ValueError(f"command must be a string, got {self.command!r}")
        for name in ("methods", "sanity_methods"):
            object.__setattr__(self, name, _names(name, getattr(self, name)))
        if self.memory_budget is not None:
            check_budget(self.memory_budget)
        object.__setattr__(self, "chunks", _chunks(self.chunks))
        self.check_methods()
        if self.protocol == "authors":  # their scripts perturb in one order: one tie seed
            object.__setattr__(self, "tie_seeds", 1)

    def check_methods(self) -> None:
        """A ValueError naming the methods of ``methods`` and ``sanity_methods`` that are not registered."""
        runnable = default_methods()
        unknown = [m for m in (self.methods or ()) + (self.sanity_methods or ()) if m not in runnable]
        registered = {spec.name: spec for spec in method_specs() if spec.image is not None}
        scoreless = [m for m in unknown if m in registered]  # registered, but for no score the evaluation explains
        if scoreless:
            raise ValueError("; ".join(
                f"{m} is not evaluated: it explains only {', '.join(map(repr, registered[m].scores))}, a score that "
                "the evaluation's targets (each class's text embedding, averaged over the templates) do not give"
                for m in scoreless) + f"; the evaluation takes {sorted(set(runnable) - {RANDOM}) + [RANDOM]}")
        if unknown:
            known = sorted(set(runnable) - {RANDOM}) + [RANDOM]
            raise ValueError(f"unknown methods {unknown}; available: {known}")

    def settings(self) -> dict[str, Any]:
        """The recorded fields, in their order (``timing_budget`` and ``score`` only when they are not their
        defaults, 1.0 and the cosine: runs recorded before they existed resume)."""
        recorded = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("recorded", True)}
        if recorded["timing_budget"] == 1.0:
            del recorded["timing_budget"]
        if recorded["score"] == DEFAULT_SCORE:
            del recorded["score"]
        return recorded

    def to_json(self, *, dataset: str, provenance: Mapping[str, Any], classes: int) -> dict[str, Any]:
        """The run's ``config.json`` (without its ``distributed`` record, which the run adds, nor
        ``not_run``): the data set's name, the model's ``provenance`` (``records.provenance``), the
        settings and the number of ``classes`` of the zero-shot classifier."""
        settings = list(self.settings().items())
        cut = [name for name, _ in settings].index("faithfulness") + 1  # where the first runs wrote "classes"
        return {"dataset": dataset, **provenance, **dict(settings[:cut]), "classes": classes, **dict(settings[cut:])}


def config_of(config: EvalConfig | None, settings: Mapping[str, Any]) -> EvalConfig:
    """``config`` (default: the defaults) with ``settings`` (``EvalConfig``'s field names) set, validated;
    a name that is no field is a TypeError naming it and the fields."""
    names = {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown evaluation settings {unknown}; the settings are {sorted(names)}")
    return replace(config, **settings) if config is not None else EvalConfig(**settings)
