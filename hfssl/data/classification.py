"""Labeled data for transfer: text (datasets) and images (hfssl.data.images), label maps, checks, few-label subsets.

Loading is `datasets`' (text) and hfssl.data.images' (images). What is added here is what a
classification run needs to hold before it trains: one label space (`label_names`, whose order
gives the ids), labels checked to be usable (two classes or more, no evaluation label unseen in
training), a stratified held-out split, and stratified per-class subsets for few-label runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict

from hfssl.args import ImageClassificationDataArguments, TextClassificationDataArguments
from hfssl.data.images import DecodedImages, ImageBatchCollator, ImageSource, ImageSplits, files_source, load_image_sources
from hfssl.data.samples import DEFAULT_TEXT_LABELED_NAME, python_docs_labeled

logger = logging.getLogger(__name__)

__all__ = [
    "LabeledImageCollator",
    "LabeledImages",
    "LabeledText",
    "balanced_class_weights",
    "check_labels",
    "load_image_classification",
    "load_text_classification",
    "per_class_sample",
    "stratified_split",
    "tokenize_classification",
]


@dataclass
class LabeledText:
    """Train and evaluation splits with an int `labels` column, the text column, the class names, and a data name."""

    splits: DatasetDict
    text_column: str
    label_names: list[str]
    description: str


def check_labels(train: np.ndarray, evaluation: np.ndarray, label_names: Sequence[str], where: str) -> None:
    """Fail before training on labels a classifier cannot learn or be scored on."""
    if (evaluation < 0).any():
        raise ValueError(
            f"The evaluation data ({where}) has {int((evaluation < 0).sum())} unlabeled rows (label -1), "
            "as Hub test splits often do. Give labeled evaluation data with --validation_file."
        )
    seen = set(np.unique(train).tolist())
    if len(seen) < 2:
        only = label_names[next(iter(seen))] if seen else "none"
        raise ValueError(
            f"The training data ({where}) has a single class ({only!r}): a classifier needs at least two. "
            "Check --label_column, or the sampling options (--max_train_samples, --train_samples_per_class)."
        )
    unseen = sorted(set(np.unique(evaluation).tolist()) - seen)
    if unseen:
        raise ValueError(
            f"The evaluation data ({where}) has labels never seen in training: "
            f"{', '.join(repr(label_names[i]) for i in unseen)}. Add training examples of them, or drop them "
            "from the evaluation data."
        )


def stratified_split(labels: np.ndarray, percentage: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions in random order, each class split in proportion when every class has two or more."""
    from sklearn.model_selection import train_test_split

    n_held = max(1, round(len(labels) * percentage / 100))
    counts = np.bincount(labels)
    stratify = labels if n_held >= np.count_nonzero(counts) and counts[counts > 0].min() >= 2 else None
    kept, held = train_test_split(np.arange(len(labels)), test_size=n_held, random_state=seed, stratify=stratify)
    return kept, held


def per_class_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of `per_class` examples of each class, drawn at random (all of a smaller class)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            logger.warning(
                "Class %s has only %d training examples (--train_samples_per_class %d): keeping all.",
                label,
                len(members),
                per_class,
            )
        picked.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """n / (classes x count) per class (scikit-learn's 'balanced'); a class absent from training gets 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _label_space(train: Dataset, column: str) -> tuple[list[str], dict[Any, int] | None]:
    """Class names, and how raw label values map to ids (None when the column is already a ClassLabel)."""
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), None
    values = list(train[column])
    missing = sum(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)
    if missing:
        raise ValueError(f"--label_column {column!r} is empty in {missing} training rows. Fill in or drop those rows.")
    _check_label_values(values, column)
    distinct = sorted(set(values))
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}


def _check_label_values(values: list[Any], column: str) -> None:
    """Class labels are names or integer ids, all of one kind: not lists, fractions or a mix of text and numbers."""
    odd = next((v for v in values if not isinstance(v, (str, int, float))), None)
    if odd is not None:
        raise ValueError(
            f"--label_column {column!r} holds {type(odd).__name__} values such as {odd!r}; a class label "
            "is one name or integer id per row (multi-label data is not supported)."
        )
    fractions = sorted({v for v in values if isinstance(v, float) and not v.is_integer()})
    if fractions:
        raise ValueError(
            f"--label_column {column!r} holds numbers with fractions ({', '.join(map(str, fractions[:3]))}, ...): "
            "regression targets, not classes. Classification needs class names or integer ids."
        )
    if len({isinstance(v, str) for v in values}) > 1:
        raise ValueError(f"--label_column {column!r} mixes text and numbers; write every label the same way.")


def _with_label_ids(ds: Dataset, column: str, mapping: dict[Any, int] | None) -> Dataset:
    """`ds` with an int `labels` column (class ids into the training label space)."""
    values = ds[column]
    if mapping is None:
        ids = list(values)
    else:
        by_text = {str(k): v for k, v in mapping.items()}
        unknown = sorted({str(v) for v in values if str(v) not in by_text})
        if unknown:
            raise ValueError(
                f"The evaluation data has labels never seen in training: {', '.join(map(repr, unknown))}. "
                "Add training examples of them, or drop them from the evaluation data."
            )
        ids = [by_text[str(v)] for v in values]
    if "labels" in ds.column_names:
        ds = ds.remove_columns("labels")
    return ds.add_column("labels", np.asarray(ids, dtype=np.int64))


def _raw_text_splits(args: TextClassificationDataArguments) -> tuple[DatasetDict, str]:
    """The training and (when the data has one) evaluation splits as `datasets` loads them, and a name for them."""
    import datasets

    from hfssl.data.text import _resolve_files, in_memory_dataset, in_memory_name, load_hub_dataset, read_error  # as for corpora

    if args.dataset is not None:
        raw, name = in_memory_dataset(args), in_memory_name(args)
        if isinstance(raw, datasets.IterableDatasetDict):
            raise ValueError("dataset=: labeled data must be a datasets.Dataset or DatasetDict, not an iterable (streamed) one.")
    elif args.dataset_name:
        raw = load_hub_dataset(args.dataset_name, args.dataset_config_name)
        name = args.dataset_name + (f"/{args.dataset_config_name}" if args.dataset_config_name else "")
    elif args.train_file:
        data_files = {}
        builder, data_files["train"] = _resolve_files(args.train_file, "train_file")
        if args.validation_file:
            val_builder, data_files["validation"] = _resolve_files(args.validation_file, "validation_file")
            if val_builder != builder:
                raise ValueError(f"--validation_file must have the same type as --train_file ({builder}), got {val_builder}.")
        if builder == "text":
            raise ValueError(
                "--train_file: labeled text needs a .csv, .json, .jsonl or .parquet file with a text and a label column."
            )
        try:
            raw = datasets.load_dataset(builder, data_files=data_files)
        except (datasets.exceptions.DatasetGenerationError, UnicodeDecodeError, ValueError) as err:
            raise read_error(builder, data_files, err) from None
        name = args.train_file
    else:
        texts, labels, names = python_docs_labeled()
        full = Dataset.from_dict({"text": texts, "label": labels}).cast_column("label", ClassLabel(names=names))
        raw, name = DatasetDict(train=full), DEFAULT_TEXT_LABELED_NAME
    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (found: {', '.join(raw)}).")
    held_out = next((s for s in ("validation", "test") if s in raw), None)
    for split in ("train", held_out):
        if split is not None and len(raw[split]) == 0:
            raise ValueError(f"The {split} split of {name} has no rows. Give data with labeled examples.")
    return DatasetDict(train=raw["train"], **({"validation": raw[held_out]} if held_out else {})), name


def load_text_classification(args: TextClassificationDataArguments, seed: int = 42) -> LabeledText:
    """Labeled train/validation text with checked labels, from the option that names the source."""
    from hfssl.data.text import resolve_text_column

    raw, description = _raw_text_splits(args)
    train = raw["train"]
    if args.label_column not in train.column_names:
        raise ValueError(
            f"--label_column {args.label_column!r} is not in the data; its columns are: {', '.join(train.column_names)}."
        )
    text_column = resolve_text_column(train, args.text_column)
    names, mapping = _label_space(train, args.label_column)
    train = _with_label_ids(train, args.label_column, mapping)
    if "validation" in raw:
        if args.label_column not in raw["validation"].column_names:
            raise ValueError(
                f"--label_column {args.label_column!r} is not in the evaluation data; its columns are: "
                f"{', '.join(raw['validation'].column_names)}."
            )
        validation = _with_label_ids(raw["validation"], args.label_column, mapping)
    else:
        if args.validation_split_percentage == 0:
            raise ValueError("No evaluation data: give --validation_file, or a --validation_split_percentage above 0.")
        kept, held = stratified_split(np.asarray(train["labels"]), args.validation_split_percentage, seed)
        train, validation = train.select(kept), train.select(held)
    if args.train_samples_per_class is not None:
        train = train.select(per_class_sample(np.asarray(train["labels"]), args.train_samples_per_class, seed))
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        validation = validation.select(range(min(args.max_eval_samples, len(validation))))
    check_labels(np.asarray(train["labels"]), np.asarray(validation["labels"]), names, description)
    return LabeledText(DatasetDict(train=train, validation=validation), text_column, names, description)


def tokenize_classification(
    data: LabeledText, tokenizer: Any, max_seq_length: int, num_proc: int | None = None, eval_max_length: int | None = None
) -> DatasetDict:
    """input_ids / attention_mask (unpadded: the collator pads each batch) and labels, for every split.

    Training texts are cut at `max_seq_length` (cost grows with length); held-out texts only at `eval_max_length`,
    the model's own limit, because that is what `pipeline()` feeds the saved model: it does not truncate. So the
    scores hfssl reports are the predictions a plain pipeline gives, text for text.
    """

    def tokenize(batch: dict[str, list], max_length: int) -> dict[str, Any]:
        texts = [t if isinstance(t, str) else "" for t in batch[data.text_column]]
        return dict(tokenizer(texts, truncation=True, max_length=max_length), labels=batch["labels"])

    return DatasetDict(
        {
            split: ds.map(
                tokenize,
                batched=True,
                remove_columns=ds.column_names,
                num_proc=num_proc,
                desc=f"Tokenizing {split}",
                fn_kwargs={"max_length": max_seq_length if split == "train" else eval_max_length or max_seq_length},
            )
            for split, ds in data.splits.items()
        }
    )


def _folder_source(root: str, option: str) -> tuple[ImageSource, list[str]]:
    """A folder with one subfolder per class as a labeled source, and its class names."""
    import os

    from hfssl.data.images import _scan_folder  # the folder rules of pretraining

    if not os.path.isdir(root):
        raise ValueError(f"--{option} {root} is not a directory. Give a folder with one subfolder of images per class.")
    files, labels, names = _scan_folder(root)
    if labels is None:
        raise ValueError(f"--{option} {root} needs one subfolder per class (the folder names are the labels).")
    return files_source(files, labels), names


def load_image_classification(args: ImageClassificationDataArguments, seed: int = 42) -> ImageSplits:
    """Labeled training and evaluation images (not decoded yet) with checked labels."""
    from hfssl.data.images import describe_image_source

    if args.validation_dir:
        train, class_names = _folder_source(args.train_dir, "train_dir")
        validation, folder_names = _folder_source(args.validation_dir, "validation_dir")
        unseen = sorted(set(folder_names) - set(class_names))
        if unseen:
            raise ValueError(
                f"--validation_dir has classes never seen in training: {', '.join(map(repr, unseen))}. "
                "Add training images of them, or drop those folders."
            )
        validation.labels = np.array([class_names.index(folder_names[i]) for i in validation.labels], dtype=np.int64)
        rng = np.random.default_rng(seed)  # a random subset, as without --validation_dir: folders are sorted by class
        if args.max_train_samples is not None and args.max_train_samples < len(train):
            train = train.subset(np.sort(rng.permutation(len(train))[: args.max_train_samples]))
        if args.max_eval_samples is not None and args.max_eval_samples < len(validation):
            validation = validation.subset(np.sort(rng.permutation(len(validation))[: args.max_eval_samples]))
        splits = ImageSplits(train, validation, class_names, describe_image_source(args))
    else:
        splits = load_image_sources(args, seed)
    if splits.class_names is None or splits.train.labels is None:
        where = "--train_dir needs one subfolder per class" if args.train_dir else "pass --label_column naming the label column"
        raise ValueError(f"The images of {splits.description} have no labels: {where}.")
    if args.train_samples_per_class is not None:
        splits.train = splits.train.subset(per_class_sample(splits.train.labels, args.train_samples_per_class, seed))
    check_labels(splits.train.labels, splits.validation.labels, splits.class_names, splits.description)
    return splits


class LabeledImages(torch.utils.data.Dataset):
    """Decoded images with their labels: items are {"pixel_values": (C, H, W) uint8, "labels": int}."""

    def __init__(self, images: DecodedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        pixels = self.images.read(indices)
        return [{"pixel_values": p, "labels": self.images.labels[i]} for p, i in zip(pixels, indices, strict=True)]


@dataclass
class LabeledImageCollator:
    """hfssl.data.images' batch collator (augmentation, normalisation) plus the labels."""

    images: ImageBatchCollator

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {**self.images(items), "labels": torch.stack([item["labels"] for item in items])}

    def for_evaluation(self, seed: int) -> LabeledImageCollator:
        """No augmentation, for scoring."""
        return LabeledImageCollator(self.images.for_evaluation(seed))
