"""Typed options for every recipe, with one parser: defaults < recipe defaults < YAML < CLI.

Each concern is a small dataclass whose `metadata["help"]` is the single place an option is
documented; `--help` and the README tables are generated from it. Per-field checks live in
`__post_init__` and raise `ValueError` naming the flag and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from transformers import HfArgumentParser, TrainingArguments

T = TypeVar("T")

__all__ = [
    "MaskingArguments",
    "RunArguments",
    "TextDataArguments",
    "TextModelArguments",
    "default_output_dir",
    "options_table",
    "parse_args",
]


def default_output_dir(recipe: str) -> str:
    """A fresh, timestamped directory so a default run never touches an earlier result.

    Processes started by one `accelerate launch` share the launcher's start time, so they agree.
    """
    started = datetime.datetime.now()
    if "LOCAL_RANK" in os.environ and os.path.isdir(f"/proc/{os.getppid()}"):
        started = datetime.datetime.fromtimestamp(os.stat(f"/proc/{os.getppid()}").st_ctime)
    return os.path.join("outputs", f"{recipe}-{started:%Y%m%d-%H%M%S}")


def _check_fraction(name: str, value: float, low_open: bool = True, high_open: bool = True) -> None:
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"--{name} must be in {lo}0, 1{hi}, got {value}. Pass a value such as 0.15.")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"--{name} must be a positive integer, got {value}.")


@dataclass
class RunArguments(TrainingArguments):
    """TrainingArguments plus hfssl's run-level switches; every Trainer option passes through."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace an --output_dir that already holds a finished model (never done otherwise)."},
    )

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ValueError("--output_dir is required.")
        import torch

        if (self.bf16 or self.bf16_full_eval) and not torch.cuda.is_available():
            self.use_cpu = True  # transformers only allows CPU bf16 autocast when told it is on CPU
        super().__post_init__()


@dataclass
class TextDataArguments:
    """Which text to read and how to cut it into training examples."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name (or a local dataset script/dir)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Training text: a .txt/.json/.jsonl/.csv/.parquet file, a glob, or a directory of .txt files."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Held-out text in the same formats as --train_file."})
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text (default: 'text', else the only string column)."}
    )
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Percent of the training data held out when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set to this many examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set to this many examples."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream the data instead of loading it (corpora larger than memory or disk)."}
    )
    max_seq_length: int | None = field(
        default=None, metadata={"help": "Tokens per training example (default: min(512, the model's positions))."}
    )
    line_by_line: bool = field(
        default=False, metadata={"help": "One example per line (padded) instead of packing text into full blocks."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize even when a cached result exists."})
    max_corpus_documents: int | None = field(
        default=None, metadata={"help": "Embedded default corpus only: how many documents to read (default: all)."}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}."
            )
        for name in ("max_train_samples", "max_eval_samples", "max_seq_length", "preprocessing_num_workers"):
            _check_positive(name, getattr(self, name))
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8 tokens, got {self.max_seq_length}.")
        if self.dataset_name and self.train_file:
            raise ValueError("Pass either --dataset_name or --train_file, not both.")


@dataclass
class TextModelArguments:
    """Which encoder and tokenizer to start from, or how to build them from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A Hub id or local path of a BERT-like checkpoint to continue pretraining (domain adaptation)."},
    )
    model_preset: str | None = field(
        default=None, metadata={"help": "Build a BERT encoder from scratch at this size: tiny | mini | small | base."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config changes for a from-scratch model, e.g. 'num_hidden_layers=2,hidden_size=128'."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A tokenizer to use instead of the model's (Hub id or local path)."}
    )
    train_tokenizer: bool | None = field(
        default=None,
        metadata={"help": "Train a new tokenizer on the training split (default: on when building from scratch without --tokenizer_name)."},
    )
    tokenizer_type: str = field(default="wordpiece", metadata={"help": "Kind of tokenizer to train: wordpiece | bpe."})
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a trained tokenizer."})
    tokenizer_training_samples: int = field(
        default=200_000, metadata={"help": "At most this many training texts are used to train the tokenizer."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modeling code from the Hub (recorded in the model card)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are cached."})
    sparse_head: bool = field(
        default=True,
        metadata={"help": "Run the MLM head and loss only at masked positions (same loss, far less compute)."},
    )

    def __post_init__(self) -> None:
        from hfssl.models import TEXT_PRESETS

        if self.model_name_or_path and self.model_preset:
            raise ValueError("Pass either --model_name_or_path (continue pretraining) or --model_preset (from scratch), not both.")
        if self.model_preset is not None and self.model_preset not in TEXT_PRESETS:
            raise ValueError(f"--model_preset must be one of {', '.join(TEXT_PRESETS)}, got {self.model_preset!r}.")
        if self.tokenizer_type not in ("wordpiece", "bpe"):
            raise ValueError(f"--tokenizer_type must be 'wordpiece' or 'bpe', got {self.tokenizer_type!r}.")
        if self.vocab_size < 64:
            raise ValueError(f"--vocab_size must be at least 64, got {self.vocab_size}.")
        if self.model_name_or_path and self.config_overrides:
            raise ValueError("--config_overrides only applies to a from-scratch model (--model_preset), not --model_name_or_path.")
        if self.train_tokenizer and self.model_name_or_path:
            raise ValueError(
                "--train_tokenizer cannot be used with --model_name_or_path: a pretrained model's embeddings "
                "belong to its own tokenizer. Drop one of the two."
            )


@dataclass
class MaskingArguments:
    """How tokens are hidden for the masked-token pretext (names as in DataCollatorForLanguageModeling)."""

    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens selected for prediction."})
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Of the selected tokens, the fraction replaced by [MASK]."})
    random_replace_prob: float = field(
        default=0.1, metadata={"help": "Of the selected tokens, the fraction replaced by a random token (the rest stay)."}
    )
    whole_word_mask: bool = field(default=False, metadata={"help": "Select all pieces of a word together."})

    def __post_init__(self) -> None:
        _check_fraction("mlm_probability", self.mlm_probability)
        _check_fraction("mask_replace_prob", self.mask_replace_prob, low_open=False, high_open=False)
        _check_fraction("random_replace_prob", self.random_replace_prob, low_open=False, high_open=False)
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError(
                f"--mask_replace_prob + --random_replace_prob must not exceed 1 "
                f"(got {self.mask_replace_prob} + {self.random_replace_prob})."
            )


def _load_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"Config file {path} must hold a mapping of option: value, got {type(loaded).__name__}.")
    return loaded


def parse_args(
    types: Sequence[type], argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[Any, ...]:
    """Parse `recipe.py [config.yaml] [--key value ...]` into the given dataclasses.

    Precedence: dataclass defaults < `defaults` (the recipe's) < YAML file < command line.
    Unknown keys in the YAML file or on the command line raise `ValueError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(list(types))
    known = {f.name for t in types for f in dataclasses.fields(t) if f.init}
    merged: dict[str, Any] = dict(defaults or {})
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        config_path = argv.pop(0)
        if not Path(config_path).is_file():
            raise ValueError(f"Config file {config_path} does not exist.")
        from_yaml = _load_yaml(config_path)
        unknown = sorted(set(from_yaml) - known)
        if unknown:
            raise ValueError(f"Unknown option(s) in {config_path}: {', '.join(unknown)}. See `--help` for valid names.")
        merged.update(from_yaml)
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise ValueError(f"Could not parse options {' '.join(argv)}: see the message above, or `--help`.") from None
        raise
    # Only what the user typed overrides the YAML and recipe defaults.
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    for action in parser._actions:
        if typed.intersection(action.option_strings) and action.dest != "help":
            merged[action.dest] = getattr(namespace, action.dest)
    return parser.parse_dict(merged)


def options_table(types: Sequence[type], skip: type | None = None) -> str:
    """A Markdown table of the options of `types` (for the README), from their help text."""
    rows = ["| option | default | what it does |", "|---|---|---|"]
    skipped = {f.name for f in dataclasses.fields(skip)} if skip else set()
    for t in types:
        for f in dataclasses.fields(t):
            if not f.init or f.name in skipped or "help" not in f.metadata:
                continue
            default = f.default if f.default is not dataclasses.MISSING else "-"
            rows.append(f"| `--{f.name}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)
