"""The options of every recipe, declared once: small dataclasses whose `metadata["help"]` documents each option.

Shared fields live in base classes (`ModelSourceArguments`, `DataSourceArguments`); a choice is declared in
`metadata["choices"]` and enforced by `check_choices`, the same way for the command line, YAML and Python.
Checks that involve several fields live in `__post_init__` and raise ValueError naming the flag and the fix.
The parser, configs and tables are in hfssl/options.py.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from hfssl.models import TEXT_PRESETS, VISION_PRESETS
from hfssl.options import (
    OptionError,
    check_choices,
    check_fraction,
    check_positive,
    config_file,
    one_of,
    option_values,
    options_table,
    parse_args,
)
from hfssl.transfer.pooling import POOLINGS
from hfssl.transfer.strategies import STRATEGIES

__all__ = [
    "ClassifierModelArguments",
    "DualEncoderArguments",
    "ImageClassificationDataArguments",
    "ImageClassifierArguments",
    "ImageDataArguments",
    "ImageTextDataArguments",
    "MaskingArguments",
    "PatchMaskingArguments",
    "PipelineArguments",
    "ProbeArguments",
    "PretrainingRunArguments",
    "RunArguments",
    "SentenceDenoisingArguments",
    "SentenceEncoderArguments",
    "TextClassificationDataArguments",
    "TextClassifierArguments",
    "TextDataArguments",
    "TextModelArguments",
    "TransferArguments",
    "VisionModelArguments",
    "DataSourceArguments",
    "ModelSourceArguments",
    "default_output_dir",
    # the parser, re-exported (hfssl.options): recipes import their options and the parser from one place
    "OptionError",
    "config_file",
    "option_values",
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


@dataclass
class RunArguments(TrainingArguments):
    """TrainingArguments plus hfssl's run-level switches; every Trainer option passes through."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace an --output_dir that already holds a finished model (never done otherwise)."},
    )
    card_license: str = field(
        default="apache-2.0",
        metadata={"help": "License in the model card's metadata: a Hub license id (apache-2.0, mit, cc-by-4.0, other, ...)."},
    )
    card_data_licenses: str | None = field(
        default=None,
        metadata={
            "help": "The licences of the training data, shown in the model card, e.g. 'OpenMoji: CC-BY-SA-4.0; Fluent "
            "Emoji: MIT'. Data under a share-alike licence usually sets --card_license too."
        },
    )
    card_language: str | None = field(
        default="en",
        metadata={"help": "Language of the training text in the model card's metadata (ISO 639 code); text recipes only."},
    )
    hub_endpoint: str | None = field(
        default=None,
        metadata={
            "help": "Hub URL for --push_to_hub, e.g. a self-hosted Hub-compatible server (default: HF_ENDPOINT, else https://huggingface.co)."
        },
    )

    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On Linux (glibc): keep freed memory in the process for reuse instead of unmapping each large tensor "
            "and page-faulting it back on the next step (a 4-layer BERT's step: 700 -> 500 ms on 2 CPU cores); "
            "false keeps the C library's defaults."
        },
    )

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ValueError("--output_dir is required.")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.card_license or ""):
            raise ValueError(f"--card_license {self.card_license!r} is not a Hub license id; use e.g. apache-2.0, mit or other.")
        if self.card_language is not None and not re.fullmatch(
            r"[a-z]{2,3}(-[A-Za-z0-9]+)?|code|multilingual", self.card_language
        ):
            raise ValueError(f"--card_language {self.card_language!r} is not an ISO 639 code (en, fr, de, ...) or 'none'.")
        _check_run_sizes(self)
        _check_reporters(self.report_to)
        from hfssl.runtime import accelerator_available

        if (self.bf16 or self.bf16_full_eval) and not accelerator_available():
            self.use_cpu = True  # transformers allows CPU bf16 autocast only when told it is on the CPU
        super().__post_init__()


# --report_to integrations whose package hfssl installs as an extra: name -> (module to import, extra)
REPORTERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "trackio": ("trackio", "trackio"),
    "comet_ml": ("comet_ml", "comet"),
    "clearml": ("clearml", "clearml"),
}


def _check_reporters(report_to: str | list[str] | None) -> None:
    """Each --report_to integration's package is installed: a missing one fails here, not after data preparation."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in ("none", "all") or name not in REPORTERS:
            continue  # "all" means those installed; transformers rejects unknown names itself
        module, extra = REPORTERS[name]
        found = importlib.util.find_spec(module) is not None or (
            name == "tensorboard" and importlib.util.find_spec("tensorboardX")
        )
        if not found:
            raise OptionError(
                f"--report_to {name}: the {module} package is not installed. Install it with "
                f"pip install 'hfssl[{extra}]', or pass --report_to none."
            )


@dataclass
class PretrainingRunArguments(RunArguments):
    """RunArguments of the pretraining recipes (mlm, mim), whose trainers can keep the weights in bf16."""

    bf16_weights: bool | None = field(
        default=None,
        metadata={
            "help": "Keep the model's weights in bf16 and fp32 master copies in the optimizer, instead of autocast's "
            "casts at every op. Default: on with --bf16 on a CPU in one process without gradient accumulation "
            "(autocast stays on GPUs). The saved model is fp32."
        },
    )

    time_budget: str | None = field(
        default=None,
        metadata={
            "help": "Train for this much wall-clock time, e.g. 90s, 10m or 1.5h (evaluations included): the speed of the "
            "first steps sets the number of steps, and the learning-rate warmup and decay span them. --max_steps, when "
            "given, stays an upper bound; the chosen step count is logged and recorded, so --max_steps N repeats the "
            "run. 'none' trains for --max_steps."
        },
    )

    token_budget: str | None = field(
        default=None,
        metadata={
            "help": "mlm.py: train on this many tokens, e.g. 20M or 1.5e8 (padding included): the steps are the tokens "
            "over the tokens of one optimizer step (batch x block length x accumulation x processes), and the "
            "learning-rate schedule spans them. Replaces the default --time_budget; giving both is an error."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_budget is not None:
            from hfssl.budget import parse_duration

            parse_duration(self.time_budget)  # a malformed budget fails here, before any data is read
        if self.token_budget is not None:
            from hfssl.budget import parse_count

            parse_count(self.token_budget)
        if self.bf16_weights:
            from hfssl.precision import master_weights_apply

            master_weights_apply(self)  # raises, before any data is read, when the run cannot use bf16 weights


def _check_run_sizes(args: TrainingArguments) -> None:
    """Trainer options that transformers accepts but that fail (or silently do nothing) once training starts."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_positive(args, name)
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(
            f"--max_steps must be a positive number of steps, or -1 to train for --num_train_epochs; got {args.max_steps}."
        )
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be above 0 (or give --max_steps), got {args.num_train_epochs}.")
    for name in ("learning_rate", "weight_decay"):
        if not getattr(args, name) >= 0:  # also catches NaN
            raise ValueError(f"--{name} must be 0 or more, got {getattr(args, name)}.")
    for name in ("eval_steps", "save_steps", "logging_steps"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name} must be above 0 (a step count, or a fraction of the run below 1), got {value}.")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise ValueError(
            f"--save_total_limit must be 1 or more (or 'none' to keep every checkpoint), got {args.save_total_limit}."
        )
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}.")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}.")


def _check_percentage(options: Any) -> None:
    if not 0 <= options.validation_split_percentage < 100:
        raise ValueError(f"--validation_split_percentage must be in [0, 100), got {options.validation_split_percentage}.")


@dataclass
class ModelSourceArguments:
    """Where a model comes from: a Hub id or local path, whether its custom code may run, and the download cache."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "A Hub id or local path of the model to start from."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modeling code from the Hub (recorded in the model card)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are cached."})

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class DataSourceArguments:
    """Where data comes from when it is not a local file or folder, and how much of it to use."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name (or a local dataset directory)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset: Any = field(default=None, init=False, repr=False)  # hfssl.run(dataset=...): an in-memory Dataset / DatasetDict
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use at most this many training examples (text: the first ones; images: a seeded random subset)."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use at most this many held-out examples (text: the first ones; images: a seeded random subset)."},
    )

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "max_train_samples", "max_eval_samples")


@dataclass
class TextDataArguments(DataSourceArguments):
    """Which text to read and how to cut it into training examples."""

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
        super().__post_init__()
        _check_percentage(self)
        check_positive(self, "max_seq_length", "preprocessing_num_workers")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8 tokens, got {self.max_seq_length}.")
        one_of(self, "dataset_name", "train_file")


@dataclass
class TextModelArguments(ModelSourceArguments):
    """Which encoder and tokenizer to start from, or how to build them from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A Hub id or local path of a BERT-like checkpoint to continue pretraining (domain adaptation)."},
    )
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": "Build an encoder from scratch at this size (default: the largest preset the time or token budget "
            "trains to 20 tokens per parameter, measured at start; tiny without a budget).",
            "choices": tuple(TEXT_PRESETS),
        },
    )
    architecture: str = field(
        default="modernbert",
        metadata={
            "choices": ("modernbert", "bert"),
            "help": "Architecture of a from-scratch encoder: modernbert (default: its classifier mean-pools natively, "
            "so a fine-tuned model loads with the stock classes and predicts as evaluated; rotary positions, "
            "GeGLU, pre-norm) | bert (the original; its stock classifier reads the [CLS] token).",
        },
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
        metadata={
            "help": "Train a new tokenizer on the training split "
            "(default: on when building from scratch without --tokenizer_name)."
        },
    )
    tokenizer_type: str = field(
        default="wordpiece", metadata={"help": "Kind of tokenizer to train.", "choices": ("wordpiece", "bpe")}
    )
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a trained tokenizer."})
    tokenizer_training_samples: int = field(
        default=200_000, metadata={"help": "At most this many training texts are used to train the tokenizer."}
    )
    sparse_head: bool = field(
        default=True,
        metadata={"help": "Run the MLM head and loss only at masked positions (same loss, far less compute)."},
    )
    pretraining_dropout: float | None = field(
        default=0.0,
        metadata={
            "help": "Dropout probability of every dropout layer while pretraining; the saved config keeps the "
            "model's own values for fine-tuning. 'none' keeps the model's. 0 as in Cramming (Geiping & Goldstein 2023)."
        },
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the MLM head's own weights (those outside the encoder; a decoder tied to "
            "the input embeddings follows --learning_rate). For continued pretraining of a checkpoint that has no "
            "MLM head (e.g. a sentence-transformers model), whose head starts random, e.g. 1e-3. Default: --learning_rate; "
            "with --objective electra it covers the generator and the replaced-token head (1e-3 from a checkpoint, "
            "where both start random)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "model_name_or_path", "model_preset", notes=(" (continue pretraining)", " (from scratch)"))
        if self.pretraining_dropout is not None and not 0 <= self.pretraining_dropout < 1:
            raise ValueError(f"--pretraining_dropout must be in [0, 1), got {self.pretraining_dropout}.")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(
                f"--head_learning_rate must be positive, got {self.head_learning_rate}. Leave it unset to use --learning_rate."
            )
        if self.vocab_size < 64:
            raise ValueError(f"--vocab_size must be at least 64, got {self.vocab_size}.")
        if self.model_name_or_path and self.config_overrides:
            raise ValueError(
                "--config_overrides only applies to a from-scratch model (--model_preset), not --model_name_or_path."
            )
        if self.train_tokenizer and self.model_name_or_path:
            raise ValueError(
                "--train_tokenizer cannot be used with --model_name_or_path: a pretrained model's embeddings "
                "belong to its own tokenizer. Drop one of the two."
            )


@dataclass
class SentenceEncoderArguments(ModelSourceArguments):
    """The pretrained sentence encoder to adapt (TSDAE continues training a model; it does not build one)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A Hub id or local path of a BERT-like encoder to adapt, e.g. sentence-transformers/all-MiniLM-L6-v2 "
            "(required). Its sentence-transformers pooling is used when it has one, else mean pooling."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model_name_or_path:
            raise ValueError(
                "--model_name_or_path is required: TSDAE adapts an existing encoder to your text, e.g. "
                "--model_name_or_path sentence-transformers/all-MiniLM-L6-v2. To pretrain an encoder from "
                "scratch, use recipes/mlm.py."
            )


@dataclass
class SentenceDenoisingArguments:
    """How sentences are damaged for the TSDAE pretext (Wang et al. 2021)."""

    deletion_ratio: float = field(
        default=0.6, metadata={"help": "Fraction of words deleted from each sentence the encoder sees (0.6 in the TSDAE paper)."}
    )

    def __post_init__(self) -> None:
        check_fraction("deletion_ratio", self.deletion_ratio)


@dataclass
class MaskingArguments:
    """How tokens are hidden for the masked-token pretext (names as in DataCollatorForLanguageModeling)."""

    objective: str = field(
        default="mlm",
        metadata={
            "choices": ("mlm", "electra"),
            "help": "mlm: the encoder predicts the masked tokens (BERT) | electra: replaced-token detection (Clark et al. "
            "2020): a small generator (a third of the layers, sharing the embeddings) fills the masked tokens with "
            "samples, and the encoder, saved as a stock base model, learns to tell every token original or replaced "
            "(default 15% masking).",
        },
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens selected for prediction."})
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Of the selected tokens, the fraction replaced by [MASK]."})
    random_replace_prob: float = field(
        default=0.1, metadata={"help": "Of the selected tokens, the fraction replaced by a random token (the rest stay)."}
    )
    whole_word_mask: bool = field(default=False, metadata={"help": "Select all pieces of a word together."})

    def __post_init__(self) -> None:
        check_choices(self)
        check_fraction("mlm_probability", self.mlm_probability)
        check_fraction("mask_replace_prob", self.mask_replace_prob, low_open=False, high_open=False)
        check_fraction("random_replace_prob", self.random_replace_prob, low_open=False, high_open=False)
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError(
                f"--mask_replace_prob + --random_replace_prob must not exceed 1 "
                f"(got {self.mask_replace_prob} + {self.random_replace_prob})."
            )


@dataclass
class ImageDataArguments(DataSourceArguments):
    """Which images to read, how to hold some out, and the light augmentation applied per batch."""

    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "A folder of images (any format Pillow reads). With one subfolder per class, the folder "
            "names are the labels (used only by the kNN / linear-probe evaluation)."
        },
    )
    image_column: str | None = field(
        default=None,
        metadata={"help": "--dataset_name: the column holding the images (default: 'image', 'img' or the only image column)."},
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "--dataset_name: the column holding class labels (default: 'label', 'labels' or the only class-label column)."
        },
    )
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Percent of the training images held out when the data has no validation or test split."}
    )
    skip_corrupt_images: bool = field(
        default=False,
        metadata={
            "help": "An unreadable or corrupt image file stops the run before training with an error naming it "
            "(default); pass true to skip such files instead (the summary and hfssl.json count them)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "--dataset_name: stream the training images instead of downloading the dataset; each batch is "
            "decoded when drawn (give --dataloader_num_workers to decode on more cores). The held-out images (the "
            "first --max_eval_samples, default 1000) are decoded and cached once."
        },
    )
    image_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where images are cached once decoded and resized, C x H x W bytes each, for every later run "
            "to reuse (default: $HFSSL_CACHE/images, else ~/.cache/hfssl/images). Give a fast local disk."
        },
    )
    crop_min_scale: float = field(
        default=0.6,
        metadata={"help": "Random resized crop: the smallest fraction of the image area a crop keeps (1 turns cropping off)."},
    )
    horizontal_flip: bool = field(
        default=False,
        metadata={"help": "Mirror half of the training images left-right (off: it changes what digits and text mean)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "dataset_name", "train_dir")
        _check_percentage(self)
        if self.streaming and not self.dataset_name:
            raise ValueError(
                "--streaming reads a Hub dataset (--dataset_name) as it downloads; a local --train_dir is read from disk "
                "and cached once anyway. Drop --streaming, or give --dataset_name."
            )
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(
                f"--crop_min_scale must be in (0, 1], got {self.crop_min_scale}. Pass e.g. 0.6, or 1 to turn cropping off."
            )


@dataclass
class VisionModelArguments(ModelSourceArguments):
    """Which ViT to start from, or its size and image geometry when built from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A Hub id or local path of a ViT or ViT-MAE checkpoint to continue pretraining "
            "(its encoder is reused; a decoder of the chosen --method is kept when present)."
        },
    )
    model_preset: str | None = field(
        default=None,
        metadata={"help": "Build a ViT from scratch at this size (default: tiny).", "choices": tuple(VISION_PRESETS)},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "From scratch: image side in pixels (default: the preset's; tiny 16, small/base 224)."}
    )
    patch_size: int | None = field(
        default=None,
        metadata={"help": "From scratch: patch side in pixels; must divide --image_size (default: tiny 4, small/base 16)."},
    )
    num_channels: int | None = field(
        default=None,
        metadata={"help": "From scratch: 1 (grayscale) or 3 (RGB) (default: 1 when every training image is grayscale, else 3)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config changes for a from-scratch model, e.g. 'num_hidden_layers=2,decoder_hidden_size=64'."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "model_name_or_path", "model_preset", notes=(" (continue pretraining)", " (from scratch)"))
        if self.model_name_or_path:
            given = [
                f"--{n}" for n in ("image_size", "patch_size", "num_channels", "config_overrides") if getattr(self, n) is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to a from-scratch model (--model_preset); "
                    f"--model_name_or_path {self.model_name_or_path} brings its own. Drop them."
                )
            return
        self.model_preset = self.model_preset or "tiny"
        for name in ("image_size", "patch_size"):
            check_positive(self, name)
            if getattr(self, name) is None:
                setattr(self, name, VISION_PRESETS[self.model_preset][name])
        if self.image_size % self.patch_size:
            raise ValueError(
                f"--image_size {self.image_size} is not divisible by --patch_size {self.patch_size}. Pick a --patch_size "
                f"that divides it (e.g. {_divisor_near(self.image_size, self.patch_size)}) or a multiple of it as --image_size."
            )
        if self.num_channels not in (None, 1, 3):
            raise ValueError(f"--num_channels must be 1 (grayscale) or 3 (RGB), got {self.num_channels}.")


def _divisor_near(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))


@dataclass
class PatchMaskingArguments:
    """How patches are hidden for the masked-image pretext (names as in transformers' run_mae.py / run_mim.py)."""

    method: str = field(
        default="mae",
        metadata={
            "choices": ("mae", "simmim"),
            "help": "mae: the encoder sees only the visible patches, a small decoder predicts the rest (ViTMAEForPreTraining). "
            "simmim: masked patches become a learned token, a linear head predicts their pixels (ViTForMaskedImageModeling).",
        },
    )
    mask_ratio: float | None = field(
        default=None, metadata={"help": "Fraction of patches masked, in [0, 1) (default: mae 0.75, simmim 0.6)."}
    )
    mask_type: str | None = field(
        default=None,
        metadata={
            "choices": ("random", "block"),
            "help": "simmim: random (independent mask units, as run_mim.py) or block (BEiT block-wise: random "
            "rectangles; the default, it makes the encoder reason beyond neighbouring patches). mae: random only.",
        },
    )
    mask_patch_size: int | None = field(
        default=None,
        metadata={
            "help": "simmim: side in pixels of the square unit masked together; a multiple of the patch size that "
            "divides the image size (default: the patch size; run_mim.py uses 32 at 192 pixels)."
        },
    )
    norm_pix_loss: bool = field(
        default=False,
        metadata={
            "help": "mae: predict each patch's pixels normalised by its own mean and std (the MAE paper's better targets)."
        },
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.mask_ratio is None:
            self.mask_ratio = 0.75 if self.method == "mae" else 0.6
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}. Pass e.g. 0.75 (mae) or 0.6 (simmim).")
        if self.mask_type is None:
            self.mask_type = "random" if self.method == "mae" else "block"
        if self.method == "mae":
            simmim_only = [
                f"--{n}"
                for n, on in (
                    ("mask_patch_size", self.mask_patch_size is not None),
                    ("mask_type block", self.mask_type == "block"),
                )
                if on
            ]
            if simmim_only:
                raise ValueError(f"{', '.join(simmim_only)} only apply to --method simmim (MAE masks single patches at random).")
        elif self.norm_pix_loss:
            raise ValueError("--norm_pix_loss only applies to --method mae.")
        check_positive(self, "mask_patch_size")


@dataclass
class ImageTextDataArguments(ImageDataArguments):
    """Which image-caption pairs to align: images as for mim.py, captions from a column or from the class names."""

    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "A folder of images: with a metadata.jsonl / metadata.csv (file_name, text), its captions; "
            "else one subfolder per class, captioned with --caption_template."
        },
    )
    caption_column: str | None = field(
        default=None,
        metadata={"help": "The column holding the captions (default: 'text', 'caption', 'captions' or 'sentence' when present)."},
    )
    caption_template: str = field(
        default="a photo of a {label}.",
        metadata={
            "help": "The caption of a labeled image without one, and the zero-shot prompt: '{label}' becomes the class "
            "name. Pass the same as hypothesis_template (with '{}') to pipeline('zero-shot-image-classification')."
        },
    )
    max_caption_length: int = field(default=32, metadata={"help": "Captions are cut to this many tokens."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.streaming:
            raise ValueError("--streaming: only mim.py streams images (a few labeled or captioned ones are read whole). Drop it.")
        if "{label}" not in self.caption_template:
            raise ValueError(f"--caption_template must contain '{{label}}', got {self.caption_template!r}.")
        check_positive(self, "max_caption_length")


@dataclass
class DualEncoderArguments:
    """The two towers, how they are joined, and which of them learn."""

    text_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The text tower: a Hub id or local path of a BERT-family encoder (an `hfssl mlm --architecture bert` "
            "output, the packaged MiniLM, ...). Default: a BERT of --text_preset with a tokenizer trained on the captions."
        },
    )
    text_preset: str = field(
        default="tiny", metadata={"help": "From scratch: the text tower's size.", "choices": tuple(TEXT_PRESETS)}
    )
    image_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The image tower: a Hub id or local path of a ViT, a ViT-MAE (used whole, without masking) or an "
            "`hfssl mim` output. Default: a ViT of --image_preset."
        },
    )
    image_preset: str = field(
        default="tiny", metadata={"help": "From scratch: the image tower's size.", "choices": tuple(VISION_PRESETS)}
    )
    image_size: int | None = field(default=None, metadata={"help": "From scratch: image side in pixels (default: the preset's)."})
    patch_size: int | None = field(default=None, metadata={"help": "From scratch: patch side in pixels (default: the preset's)."})
    vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary of the tokenizer trained on the captions (from scratch)."}
    )
    projection_dim: int = field(default=256, metadata={"help": "Size of the shared embedding space both towers project into."})
    loss: str = field(
        default="clip",
        metadata={
            "choices": ("clip", "siglip"),
            "help": "clip: softmax over the batch, learned temperature clamped at 100 | siglip: pairwise sigmoid with a "
            "learned temperature and bias (initialised at 10 and -10).",
        },
    )
    lock_image: bool = field(default=False, metadata={"help": "Freeze the image tower (LiT: a locked, pretrained image tower)."})
    lock_text: bool = field(default=False, metadata={"help": "Freeze the text tower."})
    unlocked_image_layers: int = field(default=0, metadata={"help": "With --lock_image: leave this many top layers learning."})
    unlocked_text_layers: int = field(default=0, metadata={"help": "With --lock_text: leave this many top layers learning."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modeling code from the Hub."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are cached."})

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "projection_dim", "vocab_size")
        for tower in ("image", "text"):
            if getattr(self, f"unlocked_{tower}_layers") < 0:
                raise ValueError(f"--unlocked_{tower}_layers must be 0 or more.")
            if getattr(self, f"unlocked_{tower}_layers") and not getattr(self, f"lock_{tower}"):
                raise ValueError(f"--unlocked_{tower}_layers only applies with --lock_{tower} true.")


@dataclass
class ProbeArguments:
    """How the encoder's features are scored with labels it never trained on (kNN and linear probe)."""

    knn_k: int = field(
        default=20, metadata={"help": "Neighbours in the kNN vote (cosine similarity, weighted by exp(similarity / 0.07))."}
    )
    probe_samples: int = field(
        default=5000, metadata={"help": "At most this many labeled training images are encoded to fit the kNN and linear probe."}
    )

    def __post_init__(self) -> None:
        check_positive(self, "knn_k")
        check_positive(self, "probe_samples")


def _check_labeled_sampling(args: Any) -> None:
    """Checks shared by the labeled-data options of both transfer recipes."""
    check_positive(args, "train_samples_per_class")
    if args.max_train_samples is not None and args.train_samples_per_class is not None:
        one_of(args, "max_train_samples", "train_samples_per_class", notes=("", " (a stratified subset)"))


@dataclass
class TextClassificationDataArguments(DataSourceArguments):
    """Which labeled text to read (names as in transformers' run_classification.py) and how much of it."""

    train_file: str | None = field(
        default=None, metadata={"help": "Labeled training data: a .csv/.json/.jsonl/.parquet file (or a glob)."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Labeled evaluation data in the same format "
            "(default: the data's validation/test split, else a held-out part)."
        },
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text (default: 'text', else the only string column)."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the class labels (names or ids)."})
    validation_split_percentage: int = field(
        default=20,
        metadata={"help": "Percent of the training data held out (stratified by label) when there is no evaluation data."},
    )
    train_samples_per_class: int | None = field(
        default=None,
        metadata={"help": "Few-label experiments: keep this many training examples per class, drawn at random (stratified)."},
    )
    max_seq_length: int | None = field(
        default=None, metadata={"help": "Truncate texts to this many tokens (None: min(512, the model's positions))."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "dataset_name", "train_file")
        if self.validation_file and not (self.dataset_name or self.train_file):
            raise ValueError(
                "--validation_file needs --train_file or --dataset_name (the embedded default brings its own split)."
            )
        _check_percentage(self)
        _check_labeled_sampling(self)
        check_positive(self, "max_seq_length", "preprocessing_num_workers")


@dataclass
class ImageClassificationDataArguments(ImageDataArguments):
    """Which labeled images to read, how much of them, and the light augmentation applied per batch."""

    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of images with one subfolder per class; the folder names are the labels."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "--dataset_name: the column holding class labels (default: 'label' or 'labels')."}
    )
    validation_dir: str | None = field(
        default=None,
        metadata={
            "help": "A folder of evaluation images laid out like --train_dir (default: a held-out part of the training images)."
        },
    )
    train_samples_per_class: int | None = field(
        default=None,
        metadata={"help": "Few-label experiments: keep this many training images per class, drawn at random (stratified)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.streaming:
            raise ValueError("--streaming: only mim.py streams images (a few labeled or captioned ones are read whole). Drop it.")
        if self.validation_dir and not self.train_dir:
            raise ValueError("--validation_dir needs --train_dir.")
        _check_labeled_sampling(self)


@dataclass
class ClassifierModelArguments(ModelSourceArguments):
    """Which pretrained encoder the classifier starts from, or the same architecture with random weights."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The starting checkpoint: the output of mlm.py / mim.py, or any Hub id or local path of a "
            "BERT-like encoder, ViT or CNN (finetune_text.py default: the packaged MiniLM)."
        },
    )
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Same architecture and tokenizer / image processor, random weights: the control arm of "
            "a 'does pretraining help?' comparison."
        },
    )
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": "finetune_image.py without --model_name_or_path: a ViT built from scratch at this size (default tiny).",
            "choices": tuple(VISION_PRESETS),
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "model_name_or_path", "model_preset", notes=("", " (a ViT from scratch)"))


@dataclass
class TextClassifierArguments:
    """How a text classifier summarises the token states it classifies from (finetune_text.py only)."""

    pooling: str | None = field(
        default=None,
        metadata={
            "choices": POOLINGS,
            "help": "mean: the head reads the average of the token states over non-padding tokens (default where the "
            "architecture pools natively: ModernBERT, which mlm.py builds from scratch; a masked-LM-pretrained "
            "encoder never trained a [CLS] summary, and mean pooling transfers far better with few labels) | "
            "cls: the [CLS] token (default for BERT, MiniLM, RoBERTa and the other architectures whose stock "
            "classifier reads [CLS]). Saved in the model's own config, so pipeline() and from_pretrained "
            "predict as evaluated. mean on those architectures saves hfssl's mean-pooling classifier as "
            "custom code: it loads only with trust_remote_code=True, and plain loading fails loudly.",
        },
    )

    def __post_init__(self) -> None:
        check_choices(self)  # None: the default for the model (see hfssl.transfer.pooling.text_pooling)


@dataclass
class ImageClassifierArguments:
    """How a ViT image classifier summarises the patch states it classifies from (finetune_image.py only)."""

    pooling: str | None = field(
        default=None,
        metadata={
            "choices": POOLINGS,
            "help": "ViT classifiers: mean (default for pretrained weights): the head reads the average of the patch "
            "states, layer-normed, as MAE fine-tunes (masked-image pretraining never trains the [CLS] token) | cls (default "
            "from scratch): the [CLS] token. ViT encoders are classified as BEiT, whose stock head pools "
            "either way (use_mean_pooling in config.json), so pipeline() predicts as evaluated. "
            "Convolutional models (ResNet, ConvNeXt, ...) average their feature map themselves and take no "
            "--pooling.",
        },
    )

    def __post_init__(self) -> None:
        check_choices(self)  # None: the default for the model (see hfssl.transfer.pooling.image_pooling)


@dataclass
class TransferArguments:
    """How the pretrained weights are adapted to the labeled task, and how often the run is repeated."""

    strategy: str = field(
        default="full",
        metadata={
            "choices": tuple(STRATEGIES),
            "help": "full: train everything | lora: low-rank adapters (peft) + the classifier | linear_probe: "
            "backbone frozen | freeze: the bottom --freeze_layers layers frozen | lp_ft: linear probe, then full.",
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated module names LoRA wraps (default: detected per architecture, e.g. query,value)."},
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "lora: also write the adapters merged into a plain model, in merged/."}
    )
    freeze_layers: int | None = field(
        default=None, metadata={"help": "freeze: how many of the bottom layers to freeze, the embeddings included."}
    )
    lp_fraction: float = field(
        default=0.3, metadata={"help": "lp_ft: the fraction of the training steps spent on the linear probe."}
    )
    lp_learning_rate: float | None = field(
        default=None, metadata={"help": "lp_ft: learning rate of the linear-probe stage (default: 10 x --learning_rate)."}
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise learning-rate decay in (0, 1]: layer l of L trains at lr x decay^(L + 1 - l), "
            "the embeddings lowest, the head at lr (e.g. 0.75, as BEiT / ELECTRA)."
        },
    )
    l2sp_alpha: float = field(
        default=0.0,
        metadata={
            "help": "L2-SP: add alpha / 2 x ||w - w_pretrained||^2 over the trainable pretrained weights to the "
            "loss (Li et al. 2018), so fine-tuning stays near the starting point; 0 turns it off."
        },
    )
    class_weights: str = field(
        default="none",
        metadata={
            "choices": ("none", "balanced"),
            "help": "none: every class weighs the same | balanced: weight each class's loss by n / (classes x its count), "
            "for imbalanced labels.",
        },
    )
    baseline: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "on", "off"),
            "help": "Also fit the classic baseline on the same split, TF-IDF (1-2 grams) + logistic regression for text, "
            "pixels + logistic regression for images, and say whether the fine-tuned model beats it (summary, "
            "eval_results.json, hfssl.json, card). auto: when the data is few-label (every class under 300 training "
            "examples).",
        },
    )
    controls: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated control arms trained and scored on the same split: scratch (the same architecture "
            "from random weights, full fine-tuning, over the same --seeds). Its accuracy goes beside the model's, and "
            "the verdict says whether pretraining paid off against it."
        },
    )
    seeds: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated seeds, e.g. 1,2,3: repeat the run and report mean and std (the first seed's model is saved)."
        },
    )

    def __post_init__(self) -> None:
        check_choices(self)
        self.control_list()
        if (self.strategy == "freeze") != (self.freeze_layers is not None):
            raise ValueError("--strategy freeze needs --freeze_layers N (and --freeze_layers only applies to it).")
        if self.freeze_layers is not None and self.freeze_layers < 0:
            raise ValueError(f"--freeze_layers must be 0 or more, got {self.freeze_layers}.")
        if self.merge_lora and self.strategy != "lora":
            raise ValueError("--merge_lora only applies to --strategy lora.")
        for name in ("lora_r", "lora_alpha"):
            check_positive(self, name)
        check_fraction("lora_dropout", self.lora_dropout, high_open=True, low_open=False)
        check_fraction("lp_fraction", self.lp_fraction)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1], got {self.layer_decay}. Pass e.g. 0.75.")
        if self.l2sp_alpha < 0:
            raise ValueError(f"--l2sp_alpha must be 0 or more, got {self.l2sp_alpha}.")
        if self.l2sp_alpha and self.strategy in ("lora", "linear_probe"):
            raise ValueError(
                f"--l2sp_alpha has nothing to pull with --strategy {self.strategy}: no pretrained weight is trained."
            )
        self.seed_list()

    def control_list(self) -> list[str]:
        """--controls as names (checked: scratch is the one control arm)."""
        names = [c.strip() for c in (self.controls or "").split(",") if c.strip()]
        unknown = sorted(set(names) - {"scratch"})
        if unknown:
            raise ValueError(f"--controls must list control arms among: scratch; got {', '.join(unknown)}.")
        return names

    def seed_list(self) -> list[int] | None:
        """--seeds as integers, or None when the run is not repeated."""
        if self.seeds is None:
            return None
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers such as 1,2,3, got {self.seeds!r}.") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds must list distinct integers such as 1,2,3, got {self.seeds!r}.")
        return seeds


@dataclass
class PipelineArguments:
    """Where a pipeline's stages write (the stages themselves are listed in its YAML file)."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Each stage writes to OUTPUT_DIR/STAGE_NAME unless it sets its own output_dir; the resolved "
            "stages are saved as OUTPUT_DIR/pipeline.yaml (default: outputs/pipeline-DATE-TIME)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Passed to every stage: replace stage outputs that already hold a finished model."}
    )

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("--output_dir is required.")
