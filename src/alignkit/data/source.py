"""Config fields every data section shares: which split to read, and which column is which field.

A recipe's data section inherits ``DataSourceFields`` and passes the fields to ``load_records``::

    load_records(cfg.train_file, "sft", split=cfg.split, columns=cfg.columns)
    load_records(cfg.eval_file, "sft", split=cfg.eval_split or cfg.split, columns=cfg.columns)
"""

from __future__ import annotations

from pydantic import Field, field_validator

from alignkit.config import Section


class DataSourceFields(Section):
    split: str | None = Field(None, description="split of a DatasetDict (a save_to_disk directory or a Hub dataset "
                              "name such as owner/name); a single file has the one split 'train'")
    eval_split: str | None = Field(None, description="split of eval_file; None = the same as split")
    columns: dict[str, str] = Field({}, description="rename columns before validation, {column: field}, e.g. "
                                    "{question: prompt} or {conversations: messages} (ShareGPT from/value "
                                    "messages are read as role/content)")

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: dict[str, str]) -> dict[str, str]:
        from alignkit.data.loading import check_columns

        return check_columns(value)
