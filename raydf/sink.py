"""Ray Data datasink that commits feature rows as parts of a :class:`raydf.store.FeatureStore`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from ray.data import Datasink

from raydf import schema as S
from raydf.store import FeatureStore

__all__ = ["FeatureSink"]


class FeatureSink(Datasink):
    """Write feature blocks as whole parts under the run's lease epoch.

    Each ``write`` call is one group tag ``(epoch, seq)`` (``seq``: the worker's nanosecond
    clock), so a retried write is a newer group of the same run; the store's winner rule and
    :meth:`FeatureStore.compact` (run by the driver, which holds the lease) do the rest. Ray
    hands a write call whole blocks and the feature stage emits all tracks of a video in one
    block, so a video's group never straddles two calls; :meth:`FeatureStore.write_rows` keeps
    it in one part. A run whose epoch was superseded writes nothing more (:class:`LeaseLost`).
    """

    def __init__(self, uri: str, *, epoch: int, rows_per_file: int, metadata: dict[bytes, bytes] | None = None) -> None:
        self.uri = uri
        self.epoch = epoch
        self.rows_per_file = rows_per_file
        self.metadata = metadata or {}

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "FeatureParquet"

    def write(self, blocks: Iterable[pa.Table], ctx: Any) -> list[tuple[str, int]]:
        tables = [b if isinstance(b, pa.Table) else pa.table(b) for b in blocks]
        tables = [t.select(list(S.FEATURE_COLUMNS)).cast(S.FEATURE_SCHEMA) for t in tables if t.num_rows]
        if not tables:
            return []
        store = FeatureStore(self.uri)
        store.check_epoch(self.epoch)
        table = pa.concat_tables(tables).replace_schema_metadata(self.metadata)
        parts = store.write_rows(table, epoch=self.epoch, seq=time.time_ns(), rows_per_file=self.rows_per_file)
        return [(p.name, p.rows) for p in parts]
