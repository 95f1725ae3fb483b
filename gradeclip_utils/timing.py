"""Timing calls, one harness for the evaluation's speed table (``evaluation.measure_speed``) and the speed
benchmark (``benchmarks/speed.py``).

A ``Meter`` times one call: CUDA synchronised around it, wall and process CPU time, and with ``memory``
the peak memory the call adds. A ``Case`` keeps one call's samples and reduces them with its
``statistic``: the benchmark keeps the median of round-robin runs (``run_cases``), the evaluation the
fastest of runs alternated with a plain forward (``run_alternating``), the run least disturbed by other
work on the machine.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .adapters import UnsupportedMethodError


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``), so that the resident set
    holds only live memory and a call's peak resident set measures what the call itself needs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class Sample:
    wall: float
    cpu: float
    peak: float | None  # bytes above the memory in use before the call


class Meter:
    """Times one call: synchronises CUDA, records wall and CPU time and the peak memory the call added.
    ``collect_garbage``: run Python's garbage collector before each call (outside the timed span)."""

    def __init__(self, device: torch.device, collect_garbage: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.collect_garbage = collect_garbage
        self.rss_peak_works = not self.cuda and _reset_peak_rss() and _proc_status("VmHWM") is not None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def in_use(self) -> int | None:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return _proc_status("VmRSS")

    def run(self, fn: Callable[[], Any], memory: bool = False) -> Sample:
        """Time one call; with ``memory``, also measure the peak memory it adds (on the CPU this first
        returns the heap's free pages to the OS, which makes the call itself slower: use it in warm-up)."""
        if self.collect_garbage:
            gc.collect()
        self.sync()
        if memory and not self.cuda:
            release_free_memory()
        before = self.in_use()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.rss_peak_works:
            _reset_peak_rss()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if not memory:
            peak = None
        elif self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device) - before
        elif self.rss_peak_works:
            peak = _proc_status("VmHWM") - before
        else:
            peak = None
        del out
        return Sample(wall, cpu, peak)


@dataclass
class Case:
    """One timed call and its samples; ``wall`` and ``cpu`` reduce the samples with ``statistic`` (the
    median by default, the benchmark's choice; the evaluation keeps the fastest run, ``min``)."""

    name: str
    group: str
    fn: Callable[[], Any]
    k: int | None = None
    note: str = ""
    samples: list[Sample] = field(default_factory=list)
    single: bool = False
    peak: float | None = None  # bytes the call adds at its peak, measured in the warm-up run
    statistic: Callable[[Iterable[float]], float] = statistics.median

    @property
    def wall(self) -> float:
        return self.statistic(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return self.statistic(s.cpu for s in self.samples)

    def record(self, base: "Case") -> dict[str, Any]:
        """The case's results, with its ratios to ``base``, for the JSON output."""
        return {"name": self.name, "k": self.k, "wall": self.wall, "cpu": self.cpu,
                "wall_ratio": self.wall / base.wall, "cpu_ratio": self.cpu / base.cpu,
                "peak_bytes": self.peak, "single_run": self.single, "note": self.note}


def run_cases(cases: list[Case], meter: Meter, repeats: int, slow_s: float, log: Callable[[str], None]) -> None:
    """Warm every case up once (measuring its peak memory), then run them round-robin; a case slower
    than ``slow_s`` in its warm-up keeps that one run (marked) instead of being repeated. A case that
    the model's family cannot run (``UnsupportedMethodError``) is dropped from ``cases`` with the reason."""
    for case in list(cases):
        try:
            sample = meter.run(case.fn, memory=True)
        except UnsupportedMethodError as error:
            log(f"  {case.name}: not available for this family ({error})")
            cases.remove(case)
            continue
        case.peak = sample.peak
        log(f"  warm-up {case.name}{'' if case.k is None else f' K={case.k}'}: {sample.wall:.2f} s")
        if sample.wall > slow_s:
            case.samples.append(sample)
            case.single = True
    for r in range(repeats):
        for case in cases:
            if not case.single:
                case.samples.append(meter.run(case.fn))
        log(f"  repeat {r + 1}/{repeats} done")


def run_alternating(case: Case, reference: Case, meter: Meter, *, repeats: int = 5, slow_seconds: float = 5.0,
                    budget_seconds: float = 1.0, max_runs: int = 50) -> None:
    """Time ``case`` in alternation with ``reference`` (a plain forward), so that other work on a shared
    machine hits both alike: one warm-up run of the case (not kept), one run of the reference, then runs
    of each in turn: at least ``repeats`` and more, up to ``max_runs``, until ``budget_seconds`` of the
    case's runs are spent; two when the warm-up took over ``slow_seconds``."""
    first = meter.run(case.fn).wall
    reference.samples.append(meter.run(reference.fn))
    wanted = repeats if first <= slow_seconds else 2
    while len(case.samples) < wanted or (first <= slow_seconds and sum(s.wall for s in case.samples) < budget_seconds
                                         and len(case.samples) < max_runs):
        case.samples.append(meter.run(case.fn))
        reference.samples.append(meter.run(reference.fn))
