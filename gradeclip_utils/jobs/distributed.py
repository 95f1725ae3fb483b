"""The processes of a run with ``torch.distributed``: the evaluation and the dataset explanation on several.

Launch: ``torchrun --nproc-per-node N -m gradeclip_utils.evaluate ...`` (or ``-m gradeclip_utils.cli
explain-dataset ...``). torchrun, ``accelerate launch`` and a SLURM script that exports them set
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them. Without
them (a plain ``python -m ...``) everything runs in one process, as before. Each rank runs on
``cuda:LOCAL_RANK`` with the NCCL backend where CUDA is available (or on the CPU with gloo,
``--device cpu``).

What the commands build on here (their part files, atomic writes and merging are ``jobs.files``'s):

* **Work units and sharding.** A command cuts its items into units that do not depend on the number
  of processes (the evaluation: its batches; the dataset explanation: its shard files), and unit i
  goes to rank ``i % world_size`` (:func:`shard_indices`). Each unit is computed exactly as one process
  computes it, so the results are the same whatever the number of processes, and every unit lands on
  exactly one rank.
* **Faults** (:meth:`Context.guard`): a rank that fails writes its error to ``OUT/parts/error.rankR.txt``
  and exits non-zero; torchrun then stops the other ranks and exits non-zero, naming the rank. A rank
  waiting in a collective for a rank that died reports that rank's recorded error
  (:class:`RankFailedError`). Starting the same command again resumes from the part files.
* **Progress** (:meth:`Context.progress`): one bar, on rank 0, counting the work of all ranks (through
  the rendezvous store), so its rate is the global rate.
* **Loading** (:func:`load_units`): units decoded in ``torch.utils.data.DataLoader`` worker processes,
  pinned memory and non-blocking copies to CUDA.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from ..errors import GradEclipError
from .files import PARTS, atomic_write_text

__all__ = ["Context", "GlobalProgress", "RankFailedError", "init", "items_per_rank", "load_units", "shard_indices",
           "to_device", "unit_size", "DEFAULT_TIMEOUT_MINUTES"]

DEFAULT_TIMEOUT_MINUTES = 360.0
"""How long a rank waits in a collective for the others (a rank that finishes its share early waits
for the slowest at the end; the default process-group timeout, 10-30 minutes, is too short for that)."""


class RankFailedError(GradEclipError, RuntimeError):
    """Another rank of the run failed (its recorded error is in the message)."""


# ------------------------------------------------------------------------------------ sharding
def unit_size(count: int, size: int, world_size: int) -> int:
    """The size of the work units when ``count`` items would be cut into units of ``size``: ``size``, unless
    that makes fewer units than ranks, then ceil(count / world_size), so that every rank works (12 items in
    units of 16 on 2 ranks: units of 6, not one unit on rank 0 and none on rank 1). A run on one process
    keeps ``size``."""
    if size < 1:
        raise ValueError(f"a unit needs at least one item, got size {size}")
    if world_size > 1 and math.ceil(count / size) < world_size:
        even = math.ceil(count / world_size)
        # ceil leaves a rank idle where it makes fewer units than ranks (12 items on 5 ranks: 4 units of 3)
        return even if math.ceil(count / even) >= world_size else max(1, count // world_size)
    return size


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """The units of ``rank``: unit i goes to rank ``i % world_size`` (every unit exactly once)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return list(range(rank, count, world_size))


def items_per_rank(sizes: Sequence[int], world_size: int) -> list[int]:
    """How many items each rank gets when unit i (of ``sizes[i]`` items) goes to rank i % world_size."""
    return [sum(sizes[i] for i in shard_indices(len(sizes), rank, world_size)) for rank in range(world_size)]


# ------------------------------------------------------------------------------------- loading
class _Units(torch.utils.data.Dataset):
    def __init__(self, units: Sequence[Any], load: Callable[[Any], Any]) -> None:
        self.units, self.load = units, load

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> Any:
        return self.load(self.units[index])


def _same(batch: Any) -> Any:
    return batch


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to ``device`` without blocking (pinned
    memory on CUDA makes the copy asynchronous); anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def load_units(units: Sequence[Any], load: Callable[[Any], Any], *, workers: int = 0,
               device: torch.device | str = "cpu") -> Iterator[Any]:
    """``load(unit)`` of every unit, in order, moved to ``device``.

    With ``workers`` > 0 the loading runs in that many ``DataLoader`` worker processes (forked: ``load``
    may be a closure), ahead of the consumer; on CUDA the loaded tensors are pinned and copied without
    blocking. ``load`` runs on the CPU only (a worker must not touch CUDA).
    """
    device = torch.device(device)
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    loader = torch.utils.data.DataLoader(_Units(units, load), batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_same, pin_memory=device.type == "cuda",
                                         prefetch_factor=2 if workers else None)
    for batch in loader:
        yield to_device(batch, device)


# ------------------------------------------------------------------------------------- context
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass
class Context:
    """Where this process stands in the run: its rank, the world size, its device and backend.

    The default is one process (rank 0 of 1), for which every collective is a no-op.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    run_id: str = ""
    parts: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, units: Sequence[Any]) -> list[tuple[int, Any]]:
        """(index, unit) of this rank's units."""
        return [(i, units[i]) for i in shard_indices(len(units), self.rank, self.world_size)]

    def record(self, items_per_rank: Sequence[int], **cut: int) -> dict[str, Any]:
        """The ``distributed`` entry of a run's settings file; ``cut``: the unit sizes the run used where it
        cut its units finer than asked (``unit_size``; e.g. ``batch_size=6``), so that a run with them
        repeats this one."""
        return {"world_size": self.world_size, "items_per_rank": [int(n) for n in items_per_rank],
                **{name: int(size) for name, size in cut.items()}}

    # collectives -------------------------------------------------------------------------
    def _collective(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as error:  # a peer that died: gloo raises, and torchrun stops the rest
            raise self._peer_failure(error) from error

    def _peer_failure(self, error: BaseException) -> RankFailedError:
        deadline = time.monotonic() + 2.0
        while True:  # the failing rank writes its error before it exits; a shared file system may lag
            failures = self.failures()
            if failures or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if failures:
            rank, text = failures[0]
            return RankFailedError(f"rank {rank} of {self.world_size} failed:\n{text}")
        return RankFailedError(f"rank {self.rank}: another process of the run stopped without recording an error "
                               f"(killed?): {error}")

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            kwargs = {"device_ids": [self.device.index]} if self.backend == "nccl" else {}
            self._collective(lambda: dist.barrier(**kwargs))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), by rank, on every rank; a synchronisation point."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        self._collective(lambda: dist.all_gather_object(values, value))
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def check_same(self, what: str, value: Any) -> None:
        """Every rank must hold the same ``value`` (e.g. the digest of its model's weights: random
        initial weights differ from process to process); else a ValueError on every rank."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise ValueError(f"the ranks hold different {what} (rank 0: {values[0]!r}; ranks {differ} differ). Random "
                             "initial weights differ from process to process: save one model and load it on every "
                             "rank (--pretrained CHECKPOINT, or a model folder)")

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; its result reaches every rank, and so does its error (the other
        ranks raise a ``RankFailedError`` with its message)."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as caught:
                error = caught
        outcome = self.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if outcome is not None:
            raise RankFailedError(f"rank 0 of {self.world_size} failed: {outcome}")
        return self.broadcast(result)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. to fill a cache), the other ranks after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # faults ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, out: str | Path) -> Iterator[None]:
        """Record an error raised in the block in ``OUT/parts/error.rankR.txt`` (with this run's id),
        so that ranks waiting for this one can report it, then let it propagate (the process exits
        non-zero). Error files of earlier runs are removed when the block starts."""
        self.parts = Path(out) / PARTS
        (self.parts / f"error.rank{self.rank}.txt").unlink(missing_ok=True)
        try:
            yield
        except RankFailedError:
            raise
        except BaseException as error:
            if self.distributed:
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                with contextlib.suppress(OSError):
                    atomic_write_text(self.parts / f"error.rank{self.rank}.txt", f"{self.run_id}\n{text}")
            raise

    def failures(self) -> list[tuple[int, str]]:
        """(rank, error text) of the ranks of this run that recorded an error."""
        if self.parts is None or not self.parts.is_dir():
            return []
        found = []
        for path in sorted(self.parts.glob("error.rank*.txt")):
            with contextlib.suppress(OSError, ValueError):
                run_id, _, text = path.read_text(encoding="utf-8").partition("\n")
                if run_id == self.run_id and path.name != f"error.rank{self.rank}.txt":
                    found.append((int(path.name[10:-4]), text.strip()))
        return found

    # progress ----------------------------------------------------------------------------
    def progress(self, total: int, *, desc: str, unit: str = "it", disable: bool = False) -> "GlobalProgress":
        """A progress bar on rank 0 over the work of all ranks (``total``: this rank's share; the bar's
        total is the sum). Every rank calls it at the same point (it gathers the totals)."""
        totals = self.gather(int(total))
        return GlobalProgress(self, sum(totals), desc=desc, unit=unit, disable=disable)

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class GlobalProgress:
    """Counts the work of every rank: ranks add what they finish to a counter in the rendezvous store;
    on rank 0 a thread reads the sum into the bar twice a second, so the bar's rate is the global rate.
    Use as a context manager; ``update(n)`` after each finished piece of work."""

    def __init__(self, context: Context, total: int, *, desc: str, unit: str, disable: bool) -> None:
        self.context, self.total = context, total
        self._local = 0
        self._key = f"gradeclip/{context.run_id}/{desc}"
        self._store = None
        self._bar = None
        self._stop = threading.Event()
        self._thread = None
        if context.distributed:
            self._store = self._connect()
        if context.is_main:
            label = desc + (f" ({context.world_size} processes)" if context.distributed else "")
            self._bar = tqdm(total=total, desc=label, unit=unit, disable=disable, smoothing=0.1)
            if self._store is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()

    @staticmethod
    def _connect():
        import torch.distributed as dist

        try:
            return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                 timeout=datetime.timedelta(seconds=30))
        except (KeyError, ValueError, RuntimeError):  # no reachable store: rank 0 counts its own work only
            return None

    def _poll(self) -> None:
        sent = 0
        while True:
            stopping = self._stop.wait(0.5)
            try:
                local = self._local
                count = self._store.add(self._key, local - sent)
                sent = local
            except RuntimeError:
                return
            self._bar.update(min(count, self.total) - self._bar.n)
            if stopping:
                return

    def update(self, n: int) -> None:
        self._local += n
        if self._thread is not None:
            return  # rank 0's thread sends it
        if self._store is not None:
            with contextlib.suppress(RuntimeError):
                self._store.add(self._key, n)
        if self._bar is not None:
            self._bar.update(n)

    def note(self, text: str) -> None:
        """What this rank is doing now, after the counts on rank 0's bar (for example the method)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """Stop counting (after the ranks' synchronisation, so that the bar ends at the global count)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "GlobalProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- init
def init(device: str | torch.device | None = None, *, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Context:
    """The context of this process: one process without the launcher's environment, else a rank of
    the process group (initialised here, from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT``).

    ``device``: None or "cuda" gives each rank ``cuda:LOCAL_RANK`` (NCCL) where CUDA is available, else
    the CPU (gloo); "cpu" forces the CPU. A process that sees a single GPU (``srun --gpus-per-task=1``)
    uses it whatever its LOCAL_RANK. An explicit index ("cuda:1") is refused under a launcher: each rank
    chooses its own.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        from ..loading import default_device

        return Context(device=torch.device(device) if device is not None else default_device())
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world_size} without RANK: start the processes with torchrun (or set RANK, "
                         "LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each)")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    requested = torch.device(device) if device is not None else None
    if requested is not None and requested.index is not None:
        raise ValueError(f"--device {device} names one device for every rank; under torchrun pass --device cuda "
                         "(each rank takes cuda:LOCAL_RANK) or --device cpu")
    if requested is not None and requested.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: under torchrun only cuda and cpu are supported")
    use_cuda = (requested is None or requested.type == "cuda") and torch.cuda.is_available()
    if requested is not None and requested.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if use_cuda:
        if "LOCAL_RANK" not in os.environ:
            raise ValueError("LOCAL_RANK is not set: it chooses each rank's GPU (torchrun sets it)")
        count = torch.cuda.device_count()
        if local_rank < count:
            index = local_rank
        elif count == 1:
            index = 0
        else:
            raise ValueError(f"LOCAL_RANK={local_rank} but this process sees {count} CUDA devices: start at most "
                             f"{count} processes per node")
        chosen = torch.device("cuda", index)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    else:
        chosen, backend = torch.device("cpu"), "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    kwargs = {"device_id": chosen} if backend == "nccl" else {}
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, **kwargs)
    context = Context(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen, backend=backend)
    context.run_id = context.broadcast(uuid.uuid4().hex[:12] if rank == 0 else None)
    return context
