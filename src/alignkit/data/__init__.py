"""Dataset records, loading and validation, chat rendering to (input_ids, response_mask), collation and
the synthetic arithmetic task.

    records = load_records("data/train.jsonl", "sft")             # validated; DataError names file/row/field
    train, held_out = split_records(records, eval_fraction=0.05, seed=0)
    rendered, n_dropped = render_many(tokenizer, train, max_length=512)
    batch = pad_batch(rendered[:8], pad_token_id=tokenizer.pad_token_id)   # [B, T] tensors
"""

from alignkit.data.arithmetic import (
    LEVELS,
    Problem,
    evaluate_steps,
    ideal_trace,
    make_problems,
    make_split,
    question_space,
    to_prompt_records,
    to_sft_records,
)
from alignkit.data.chat import RenderedExample, render_many, render_preference, render_prompt, render_sft
from alignkit.data.collate import pad_batch
from alignkit.data.loading import load_records, split_records, write_jsonl
from alignkit.data.schemas import (
    DataError,
    PreferenceRecord,
    PromptRecord,
    SFTRecord,
    UnpairedRecord,
    parse_preference,
    parse_prompt,
    parse_record,
    parse_sft,
    parse_unpaired,
    unpaired_from_pairs,
)

__all__ = [
    "LEVELS", "DataError", "PreferenceRecord", "Problem", "PromptRecord", "RenderedExample", "SFTRecord",
    "evaluate_steps", "ideal_trace", "load_records", "make_problems", "make_split", "pad_batch",
    "parse_preference", "parse_prompt", "parse_record", "parse_sft", "question_space", "render_many",
    "render_preference", "render_prompt", "render_sft", "split_records", "to_prompt_records",
    "to_sft_records", "write_jsonl", "UnpairedRecord", "parse_unpaired", "unpaired_from_pairs",
]
