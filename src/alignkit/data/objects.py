"""Data a user already holds, for the Python API (``recipe.run(cfg, train_dataset=...)``)."""

from __future__ import annotations

from alignkit.data.schemas import parse_record


def as_records(dataset, kind: str, *, name: str = "train_dataset") -> list:
    """A ``datasets.Dataset``, a list of dicts (or of typed records) or any iterable of them -> validated
    records of ``kind`` ('sft', 'preference', 'prompt', 'unpaired'), exactly like rows of a file: a bad row is a
    DataError naming ``<name>``, the row and the field."""
    if isinstance(dataset, (str, bytes)):
        raise TypeError(f"{name} takes rows (a datasets.Dataset or a list of dicts); for a file or a Hub name "
                        "set data.train_file / data.eval_file instead")
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)  # datasets.Dataset: to_list
    return [parse_record(kind, raw, source=f"<{name}>", row=i) for i, raw in enumerate(rows, start=1)]
