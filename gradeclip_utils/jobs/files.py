"""The files of a resumable run, on one process or many: atomic writes, CSV tables, part files and merging.

* **Atomic files** (:func:`atomic_output`): written to a temporary file beside the target, flushed and
  renamed into place, so that a reader sees the old file or the new one, never a part.
* **Part files** (:class:`Journal`): each rank (a single process is rank 0) appends its finished results to
  its own file under ``OUT/parts/`` (:data:`PARTS`), one line per record, written with a single ``write``
  and ``fsync``; each line carries the CRC32 of its content, and a reader skips a line that is incomplete
  or fails its check (what a kill in the middle of a write leaves), so a half-written record is never
  read back. Starting the same command again resumes from them.
* **Merging** (:func:`merge_table`): the part files merged into the single-process table in the
  single-process order (on several processes by rank 0, after every rank has reported success); a
  result missing from the merge is an error, never a shorter table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

__all__ = ["PARTS", "Journal", "atomic_output", "atomic_write_text", "merge_table", "read_csv", "write_csv"]

PARTS = "parts"
"""The folder of a run's part files (and, on several processes, of each failing rank's error), under its output."""


# ----------------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is flushed to disk and renamed onto
    ``path`` (atomic on POSIX), on failure removed. Readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """A CSV file written atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            handle.write(_csv_text(columns, rows))


# ------------------------------------------------------------------------------------ part files
class Journal:
    """One rank's append-only part file ``FOLDER/NAME.rankR.jsonl``: one record (a list of rows) per line.

    A line is ``CRC32-hex SPACE JSON NEWLINE``, written with one ``os.write`` on an ``O_APPEND``
    descriptor and flushed with ``fsync``. :meth:`read` keeps only complete lines whose CRC matches,
    so a record cut short by a kill is never read; opening the journal for appending first cuts such
    a torn tail off, so that the next record starts on a line of its own.
    """

    def __init__(self, folder: str | Path, name: str, rank: int) -> None:
        self.path = Path(folder) / f"{name}.rank{rank}.jsonl"
        self._checked = False

    @staticmethod
    def _records(path: Path) -> tuple[list[list[dict[str, Any]]], int]:
        """The valid records of one file and the byte length of its valid prefix."""
        data = path.read_bytes() if path.exists() else b""
        records, valid, start = [], 0, 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end]
            start = end + 1
            crc, _, payload = line.partition(b" ")
            try:
                if int(crc, 16) != zlib.crc32(payload):
                    continue
                records.append(json.loads(payload))
            except ValueError:
                continue
            valid = start
        return records, valid

    def _repair(self) -> None:
        if self._checked:
            return
        if self.path.exists():
            _, valid = self._records(self.path)
            if valid < self.path.stat().st_size:
                with open(self.path, "rb+") as handle:
                    handle.truncate(valid)
        self._checked = True

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append one record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        payload = json.dumps(rows, separators=(",", ":"), allow_nan=True).encode()
        data = f"{zlib.crc32(payload):08x} ".encode() + payload + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def files(folder: str | Path, name: str) -> list[Path]:
        """Every rank's file of ``name`` (also of earlier runs with another number of ranks), by rank."""
        folder = Path(folder)
        found = folder.glob(f"{name}.rank*.jsonl") if folder.is_dir() else []
        return sorted(found, key=lambda p: int(p.name[len(name) + 5:-6]))

    @classmethod
    def read(cls, folder: str | Path, name: str) -> list[dict[str, Any]]:
        """The rows of every valid record of every rank's file, by rank, then in the order written."""
        return [row for path in cls.files(folder, name) for record in cls._records(path)[0] for row in record]

    @classmethod
    def remove(cls, folder: str | Path, name: str) -> None:
        """Delete every rank's file of ``name``, and the folder once it is empty."""
        for path in cls.files(folder, name):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            Path(folder).rmdir()


def merge_table(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]], *,
                identity: Callable[[dict[str, Any]], Hashable],
                order: Callable[[dict[str, Any]], Any | None], required: set[Hashable] = frozenset(),
                required_key: Callable[[dict[str, Any]], Hashable] | None = None) -> list[dict[str, str]]:
    """Merge the rows already in the CSV ``path`` with ``rows`` (from part files) and write it atomically.

    Each ``identity`` is kept once (the first seen: the file's rows, then ``rows`` in order). Rows are
    sorted by ``order`` (a sort key; a stable sort); rows whose key is None (results of earlier runs
    that the present one does not ask for) follow in the order they came. Values are written as the
    csv module writes them, so a merged file is the file one process appends. When a ``required``
    value (of ``required_key``, default ``identity``) has no row, nothing is written and a
    RuntimeError says how many are missing: a merged file never lacks results silently.
    """
    seen: set[Hashable] = set()
    merged: list[dict[str, str]] = []
    for row in [*read_csv(path), *rows]:
        ident = identity(row)
        if ident in seen:
            continue
        seen.add(ident)
        merged.append({k: v if isinstance(v, str) else _csv_value(v) for k, v in row.items()})
    missing = set(required) - {(required_key or identity)(row) for row in merged}
    if missing:
        raise RuntimeError(f"{Path(path).name}: {len(missing)} of {len(required)} results are missing from the part "
                           f"files (e.g. {sorted(missing, key=str)[:3]}); nothing was merged. Is the output folder "
                           "on a file system that every rank sees?")
    keys = [order(row) for row in merged]
    ordered = sorted(range(len(merged)), key=lambda i: (keys[i] is None, keys[i] if keys[i] is not None else i))
    result = [merged[i] for i in ordered]
    write_csv(path, columns, result)
    return result


def _csv_value(value: Any) -> str:
    return "" if value is None else str(value)
