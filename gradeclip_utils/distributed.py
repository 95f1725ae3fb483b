"""The names ``gradeclip_utils.distributed`` held before it was split, kept importable from here.

The processes of a run (``Context``, ``init``, sharding, progress, loading) are ``jobs.distributed``'s;
the files of a run (atomic writes, CSV tables, part files, merging) are ``jobs.files``'s; the
comparison of a run's settings with its resumption's (``same_settings``) and ``rate`` are ``records``'s.
Code written against the former module keeps working; the package imports from those homes.
"""

from __future__ import annotations

from .jobs.distributed import (DEFAULT_TIMEOUT_MINUTES, Context, GlobalProgress, RankFailedError, init,
                               items_per_rank, load_units, shard_indices, to_device, unit_size)
from .jobs.files import PARTS, Journal, atomic_output, atomic_write_text, merge_table, read_csv, write_csv
from .records import rate, same_settings

__all__ = ["Context", "GlobalProgress", "Journal", "RankFailedError", "atomic_output", "atomic_write_text", "init",
           "items_per_rank", "load_units", "merge_table", "rate", "read_csv", "same_settings", "shard_indices",
           "to_device", "unit_size", "write_csv", "PARTS", "DEFAULT_TIMEOUT_MINUTES"]
