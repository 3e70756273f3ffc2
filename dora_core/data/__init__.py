"""Datasets for training: files in the users' formats -> tokenised, masked, packed examples.

Entry point: `prepare_datasets(train_path, tokenizer, max_seq_len=..., ...)` returning
`PreparedData(train, validation, report, collator)`. Row reading and validation rules live in
the torch-free `dora_formats` package; this package adds containers (CSV/Parquet),
templates, tokenisation, masking, packing and the report.
"""

from dora_core.data.collator import DataCollator
from dora_core.data.errors import DataError
from dora_core.data.packing import pack_examples
from dora_core.data.prepare import PreparedData, TokenizedDataset, prepare_datasets
from dora_core.data.sources import detect_container, file_sha256, read_examples
from dora_core.data.split import split_examples
from dora_core.data.templates import DEFAULT_CHAT_TEMPLATE, RenderError, chat_template_for, render_example
from dora_core.data.tokenization import IGNORE_INDEX, DroppedRow, TokenizedExample, tokenize_examples
from dora_formats import DatasetFormatError

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "DataCollator",
    "DataError",
    "DatasetFormatError",
    "DroppedRow",
    "PreparedData",
    "RenderError",
    "TokenizedDataset",
    "TokenizedExample",
    "chat_template_for",
    "detect_container",
    "file_sha256",
    "pack_examples",
    "prepare_datasets",
    "read_examples",
    "render_example",
    "split_examples",
    "tokenize_examples",
]
