"""Load, validate, split and write dataset records.

Formats (chosen by extension; a directory is a ``datasets.Dataset.save_to_disk`` directory):

    .jsonl      one JSON object per line; blank lines skipped; row = line number
    .json       a list of objects, or {"data": [...]}; row = 1-based position in the list
    .parquet    one record per table row (nested lists / structs become lists / dicts)
    .csv        header + string cells (so only string-valued forms: prompt/completion, text, ...);
                row = 1-based data row, header not counted
    directory   ``datasets.load_from_disk``; a DatasetDict needs ``split=``

Every row is validated at load time (``alignkit.data.schemas``); the first invalid row raises a
``DataError`` naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from alignkit.data.schemas import KINDS, DataError, Record, parse_record

FORMATS = (".jsonl", ".json", ".parquet", ".csv", "a datasets.save_to_disk directory")

T = TypeVar("T")


def load_records(
    path: str | os.PathLike, kind: str, *, limit: int | None = None, split: str | None = None,
) -> list[Record]:
    """Read and validate the records of ``path``.

    Args:
        path: a .jsonl / .json / .parquet / .csv file or a ``save_to_disk`` directory.
        kind: 'sft', 'preference' or 'prompt' (which schema every row must pass).
        limit: read only the first ``limit`` rows.
        split: the split to read from a saved ``DatasetDict`` (required there, refused elsewhere).
    Returns:
        list of SFTRecord / PreferenceRecord / PromptRecord with ``source`` = str(path), ``row`` set.
    Raises:
        FileNotFoundError (no such path), DataError (unknown format, unreadable or invalid row).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {list(KINDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (got {limit})")
    p, source = Path(path), str(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {source}")
    if split is not None and not p.is_dir():
        raise DataError(source, None, None, f"split={split!r} applies only to a datasets.save_to_disk directory")
    rows = islice(_read_rows(p, source, split), limit)
    return [parse_record(kind, raw, source=source, row=n) for n, raw in rows]


def _read_rows(p: Path, source: str, split: str | None) -> Iterator[tuple[int, Any]]:
    """-> (row number, raw row) pairs from any supported format."""
    if p.is_dir():
        return _read_saved_dataset(p, source, split)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise DataError(source, None, None, f"unsupported format {p.suffix!r}; supported: {', '.join(FORMATS)}")
    return reader(p, source)


def _read_jsonl(p: Path, source: str) -> Iterator[tuple[int, Any]]:
    with p.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(source, line_no, None, f"invalid JSON ({e})") from None


def _read_json(p: Path, source: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(source, None, None, f"invalid JSON ({e})") from None
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(source, None, None, 'expected a JSON list of objects or {"data": [...]} '
                                            f"(got {type(data).__name__})")
    return enumerate(data, start=1)


def _read_parquet(p: Path, source: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(source, None, None, f"unreadable parquet file ({e})") from None
    return enumerate(table.to_pylist(), start=1)


def _read_csv(p: Path, source: str) -> Iterator[tuple[int, Any]]:
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for n, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(source, n, None, f"more cells than header columns ({len(reader.fieldnames or [])})")
            yield n, row


def _read_saved_dataset(p: Path, source: str, split: str | None) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as e:
        raise DataError(source, None, None, "directory is not a datasets.save_to_disk directory "
                                            f"({e}); supported: {', '.join(FORMATS)}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            what = "needs split=" if split is None else f"has no split {split!r}; use split="
            raise DataError(source, None, None, f"a DatasetDict {what}one of {sorted(ds)}")
        ds = ds[split]
    elif split is not None:
        raise DataError(source, None, None, f"split={split!r} given but the directory holds a single Dataset")
    return enumerate(ds.to_list(), start=1)


def split_records(records: Sequence[T], *, eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Deterministic held-out split -> (train, eval), each in the original order.

    ``round(len * eval_fraction)`` records (at least 1 when the fraction is > 0 and there are >= 2
    records; never all of them) are chosen by a permutation seeded with ``seed``.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1) (got {eval_fraction})")
    n = len(records)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held_out]
    return train, [r for i, r in enumerate(records) if i in held_out]


def write_jsonl(records: Iterable[Mapping[str, Any] | Record], path: str | os.PathLike) -> Path:
    """Write records (dicts, or typed records via ``to_dict()``) as JSON lines, atomically (temporary
    file in the same directory, then rename); parent directories are created. Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                row = r if isinstance(r, Mapping) else r.to_dict()
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
