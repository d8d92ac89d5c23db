"""Load, validate, split and write dataset records.

Sources (a file by extension; a directory is a ``datasets.Dataset.save_to_disk`` directory):

    .jsonl      one JSON object per line; blank lines skipped; row = line number
    .json       a list of objects, or {"data": [...]}; row = 1-based position in the list
    .parquet    one record per table row (nested lists / structs become lists / dicts)
    .csv        header + string cells (so only string-valued forms: prompt/completion, text, ...);
                row = 1-based data row, header not counted
    directory   ``datasets.load_from_disk``; a DatasetDict needs ``split=``
    Hub name    anything that is not an existing path and looks like ``owner/name`` or ``name``:
                ``datasets.load_dataset(name, split=split)``; a DatasetDict needs ``split=``

A single file is one split, ``train`` (as ``datasets`` reads it): ``split`` may be None or "train".
``columns`` renames columns before validation (``{"question": "prompt", "conversations": "messages"}``).

Every row is validated at load time (``alignkit.data.schemas``); the first invalid row raises a
``DataError`` naming the file, the row and the field. A file that is not UTF-8, and a source with no rows,
are one-line DataErrors naming the file (and the row or line where known).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from alignkit.data.schemas import KINDS, DataError, Record, parse_record

FORMATS = (".jsonl", ".json", ".parquet", ".csv", "a datasets.save_to_disk directory", "a Hub dataset name")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".tsv", ".arrow", ".gz", ".zst")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

T = TypeVar("T")


def load_records(
    path: str | os.PathLike, kind: str, *, limit: int | None = None, split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[Record]:
    """Read and validate the records of ``path``.

    Args:
        path: a .jsonl / .json / .parquet / .csv file, a ``save_to_disk`` directory, or a Hugging Face Hub
            dataset name (``owner/name``: not an existing path).
        kind: 'sft', 'preference', 'prompt' or 'unpaired' (which schema every row must pass).
        limit: read only the first ``limit`` rows.
        split: the split of a ``DatasetDict`` (saved or on the Hub; required there); a single file has
            the one split "train".
        columns: {column in the data: field alignkit reads}, applied to every row before validation.
    Returns:
        list of SFTRecord / PreferenceRecord / PromptRecord with ``source`` = str(path), ``row`` set.
    Raises:
        FileNotFoundError (no such path, and not a Hub name), DataError (unknown format, not UTF-8, no
        rows, a Hub dataset that cannot be loaded, an invalid row).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {list(KINDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (got {limit})")
    columns = check_columns(columns or {})
    p, source = Path(path), str(path)
    if p.exists():
        rows = _read_rows(p, source, split)
    elif is_hub_name(source):
        rows = _read_hub(source, split)
    else:
        raise FileNotFoundError(f"data file not found: {source}")
    records = [parse_record(kind, _rename(raw, columns, source, n), source=source, row=n)
               for n, raw in islice(rows, limit)]
    if not records and limit != 0:
        raise DataError(source, None, None, "no rows: the data is empty")
    return records


def is_hub_name(name: str) -> bool:
    """Whether ``name`` reads as a Hub dataset id (``owner/name`` or ``name``, no data-file suffix)."""
    return HUB_NAME.fullmatch(name) is not None and Path(name).suffix.lower() not in SUFFIXES


def check_columns(columns: Mapping[str, str]) -> dict[str, str]:
    """Validate a {source column: field} mapping (non-empty names, no two columns onto one field)."""
    columns = dict(columns)
    if any(not isinstance(k, str) or not isinstance(v, str) or not k or not v for k, v in columns.items()):
        raise ValueError(f"columns must map non-empty column names to non-empty field names (got {columns})")
    targets = list(columns.values())
    doubled = sorted({t for t in targets if targets.count(t) > 1})
    if doubled:
        raise ValueError(f"columns maps several columns onto {doubled}; each field takes one column")
    return columns


def _rename(raw: Any, columns: dict[str, str], source: str, row: int) -> Any:
    """Apply ``columns`` to one raw row; a named column missing, or a clash with a kept column, is an error."""
    if not columns or not isinstance(raw, Mapping):
        return raw
    missing = [c for c in columns if c not in raw]
    if missing:
        raise DataError(source, row, None, f"column(s) {missing} of data.columns not found (the row has "
                                           f"{sorted(map(str, raw))})")
    clash = [(c, t) for c, t in columns.items() if t in raw and t not in columns]
    if clash:
        c, t = clash[0]
        raise DataError(source, row, None, f"data.columns maps {c!r} onto {t!r}, but the row has a {t!r} column "
                                           f"too; map {t!r} elsewhere as well, or drop one of them")
    return {columns.get(k, k): v for k, v in raw.items()}


def _read_rows(p: Path, source: str, split: str | None) -> Iterator[tuple[int, Any]]:
    """-> (row number, raw row) pairs from any supported format."""
    if p.is_dir():
        return _read_saved_dataset(p, source, split)
    if split not in (None, "train"):
        raise DataError(source, None, None, f"split={split!r}: a single file has one split, 'train'; the split "
                                            "of a DatasetDict is chosen in a saved directory or a Hub dataset")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise DataError(source, None, None, f"unsupported format {p.suffix!r}; supported: {', '.join(FORMATS)}")
    return reader(p, source)


def _not_utf8(data: bytes, err: UnicodeDecodeError, source: str, row: int | None) -> DataError:
    """The DataError for undecodable bytes: the byte, its line (its column for a JSONL row), what to do."""
    line_start, line = data.rfind(b"\n", 0, err.start) + 1, data.count(b"\n", 0, err.start) + 1
    where = f"line {line}" if row is None else f"column {err.start - line_start + 1}"
    return DataError(source, row, None, f"not UTF-8 text: byte 0x{data[err.start]:02x} at {where} cannot be "
                                        "decoded; save the file as UTF-8")


def _read_text(p: Path, source: str) -> str:
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(data, e, source, None) from None


def _read_jsonl(p: Path, source: str) -> Iterator[tuple[int, Any]]:
    with p.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(raw, e, source, line_no) from None
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(source, line_no, None, f"invalid JSON ({e})") from None


def _read_json(p: Path, source: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(p, source)
    if not text.strip():
        return iter(())
    try:
        data = json.loads(text)
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
    reader = csv.DictReader(io.StringIO(_read_text(p, source), newline=""))
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
    return enumerate(ds, start=1)


def _read_hub(name: str, split: str | None) -> Iterator[tuple[int, Any]]:
    """Rows of a Hub dataset (``datasets.load_dataset``); any failure is a one-line DataError naming it."""
    import datasets

    try:
        ds = datasets.load_dataset(name) if split is None else datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types: offline, not found, gated, bad split, ...
        raise DataError(name, None, None, _hub_failure(e)) from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(name, None, None, f"a DatasetDict needs split=one of {sorted(ds)}")
    return enumerate(ds, start=1)


def _hub_failure(e: Exception) -> str:
    """One line saying why a Hub dataset did not load, and what to do."""
    head = "not a local path, so read as a Hugging Face Hub dataset"
    text = " ".join(str(e).split()) or "no message"
    text = text if len(text) <= 200 else text[:197] + "..."
    names = {c.__name__ for c in type(e).__mro__}
    if not (isinstance(e, (ConnectionError, TimeoutError)) or any("Connect" in n or "Timeout" in n for n in names)):
        return f"{head}, which failed: {type(e).__name__}: {text}"
    offline = [v for v in OFFLINE_VARS if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]
    if offline:
        return (f"{head}, but the Hub is offline ({offline[0]}=1) and the dataset is not in the local cache; "
                "load it once online, or give a local file")
    return f"{head}, but the Hub cannot be reached ({type(e).__name__}: {text}); check the network, or give a local file"


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
