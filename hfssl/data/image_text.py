"""Image-caption pairs: a Hub dataset (an image and a caption column), an image folder with a `metadata.jsonl` /
`metadata.csv` (`file_name`, `text`: the datasets imagefolder convention), or labeled images (class subfolders, a
Hub dataset's class labels, the embedded digits) whose captions come from `--caption_template`.

Images go through hfssl.data.images (the same sources, held-out split and decoding as mim.py); the captions follow
the rows that were kept.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hfssl.data.images import ImageSource, ImageSplits, load_image_sources, normalize, random_resized_crop

__all__ = ["ImageTextCollator", "ImageTextSplits", "caption", "load_image_text"]

_CAPTION_COLUMNS = ("text", "caption", "captions", "sentence")
_METADATA = ("metadata.jsonl", "metadata.csv")


@dataclass
class ImageTextSplits:
    """The image splits and, row for row, their captions."""

    images: ImageSplits
    train_captions: list[str]
    validation_captions: list[str]
    template: str | None  # the caption template of class captions (None: the data's own captions)


def caption(template: str, label: str) -> str:
    return template.replace("{label}", label)


def _caption_column(ds: Any, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in ds.column_names:
            raise ValueError(
                f"--caption_column {requested!r} is not in the dataset; its columns are: {', '.join(ds.column_names)}."
            )
        return requested
    return next((c for c in _CAPTION_COLUMNS if c in ds.column_names), None)


def load_image_text(args: Any, seed: int = 42) -> ImageTextSplits:
    """Pairs from the option that names them; a source without captions or labels fails here, naming the fix."""
    raw, description = None, None
    if args.train_dir and any(os.path.isfile(os.path.join(args.train_dir, m)) for m in _METADATA):
        import datasets

        raw = datasets.load_dataset("imagefolder", data_dir=args.train_dir)  # the datasets convention: file_name + text
        description = args.train_dir
    elif args.dataset_name or args.dataset is not None:
        from hfssl.data.text import in_memory_dataset, load_hub_dataset

        raw = (
            in_memory_dataset(args) if args.dataset is not None else load_hub_dataset(args.dataset_name, args.dataset_config_name)
        )
    column = _caption_column(raw["train"], args.caption_column) if raw is not None else None
    if raw is not None and description is not None:  # the folder's rows, read as a dataset
        args = dataclasses.replace(args, train_dir=None)
        args.dataset = raw
    splits = load_image_sources(args, seed=seed)
    if description is not None:
        splits.description = description
    if column is not None:
        held = next((s for s in ("validation", "test") if s in raw), "train")
        texts = {name: [str(t) for t in raw[name][column]] for name in {"train", held}}
        return ImageTextSplits(
            splits,
            [texts["train"][i] for i in splits.train.indices],
            [texts[held][i] for i in splits.validation.indices],
            None,
        )
    if splits.class_names is None:
        raise ValueError(
            "These images have neither captions nor class labels. Give a caption column (--caption_column), an image "
            "folder with a metadata.jsonl (file_name, text), or class subfolders with --caption_template."
        )
    template = args.caption_template

    def captions(source: ImageSource) -> list[str]:
        return [caption(template, splits.class_names[int(label)]) for label in source.labels]

    return ImageTextSplits(splits, captions(splits.train), captions(splits.validation), template)


class PairDataset(torch.utils.data.Dataset):
    """Decoded images (hfssl.data.images.DecodedImages) with their captions."""

    def __init__(self, images: Any, captions: list[str]) -> None:
        kept = images.kept if images.kept is not None else np.arange(len(images))
        self.images, self.captions = images, [captions[i] for i in kept]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        pixels = self.images.read(indices)
        return [{"pixel_values": p, "caption": self.captions[i]} for p, i in zip(pixels, indices, strict=True)]


@dataclass
class ImageTextCollator:
    """A batch of pairs: normalised (augmented) pixels, tokenized captions, and per-caption ids (equal captions share
    one), which make every image of a repeated caption a positive for it."""

    tokenizer: Any
    mean: list[float]
    std: list[float]
    max_length: int
    crop_min_scale: float = 1.0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([item["pixel_values"] for item in items]).float()
        if self.crop_min_scale < 1.0:
            pixels = random_resized_crop(pixels, self.crop_min_scale)
        texts = [item["caption"] for item in items]
        batch = dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))
        ids = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        batch["caption_ids"] = torch.tensor([ids[t] for t in texts])
        batch["pixel_values"] = normalize(pixels, self.mean, self.std)
        return batch
