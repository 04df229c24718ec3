"""Ray Data datasink that commits feature rows as exactly-once parts of a :class:`raydf.store.FeatureStore`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from ray.data import Datasink

from raydf import schema as S
from raydf.store import FeatureStore

__all__ = ["FeatureSink"]


class FeatureSink(Datasink):
    """Write feature blocks as whole, deterministically named Parquet parts.

    Ray's ``write_parquet`` appends new files on every run; this sink instead names a part
    by the video ids it holds and leaves de-duplication to :meth:`FeatureStore.compact`,
    which the driver runs before and after each extraction.
    """

    def __init__(self, uri: str, *, metadata: dict[bytes, bytes], run_seq: int, rows_per_file: int) -> None:
        self.uri = uri
        self.metadata = metadata
        self.run_seq = run_seq
        self.rows_per_file = rows_per_file

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "FeatureParquet"

    def write(self, blocks: Iterable[pa.Table], ctx: Any) -> list[tuple[str, int]]:
        store = FeatureStore(self.uri)
        tables = [b if isinstance(b, pa.Table) else pa.table(b) for b in blocks]
        tables = [t.cast(S.FEATURE_SCHEMA) for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables).replace_schema_metadata(self.metadata)
        written = []
        for start in range(0, table.num_rows, self.rows_per_file):
            part = table.slice(start, self.rows_per_file)
            written.append((store.write_part(part, self.run_seq), part.num_rows))
        return written
