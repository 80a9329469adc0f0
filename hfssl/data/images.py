"""Image sets from the Hub, a folder or the embedded digits: decoded and resized once, augmented per batch.

Every image is decoded and resized through the image processor exactly once, into one uint8
tensor (N, C, H, W) held in memory. Training then only indexes that tensor, and the collator
does the cheap per-batch work on whole tensors: random resized crop, flip, scaling to [0, 1]
and the processor's normalisation. (torchvision would do this per image in PIL, every epoch;
hfssl does not depend on torchvision, so the two batch transforms are written here.)

A folder is scanned here rather than through datasets' "imagefolder" builder, which decodes
lazily and reports a corrupt file deep inside a map without its name: scanning first lets
hfssl name the file, and stop or skip it, before any training starts.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hfssl.args import ImageDataArguments
from hfssl.data.samples import DEFAULT_IMAGE_NAME, digits_images

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageBatchCollator",
    "ImageSource",
    "ImageSplits",
    "ImageTensorDataset",
    "data_channels",
    "decode_images",
    "describe_image_source",
    "image_processor",
    "load_image_sources",
    "normalize",
    "random_resized_crop",
]

IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}
# What Pillow raises for a file that is not an image, is truncated, or is absurdly large.
_BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class ImageSource:
    """Undecoded images of one split: how to open each one, what to call it in an error, and its label."""

    open: Callable[[int], Image.Image]  # lazily opened (header read); pixels load on convert
    name: Callable[[int], str]
    indices: np.ndarray
    labels: np.ndarray | None  # (len(indices),) class ids, or None for unlabeled data

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: np.ndarray) -> ImageSource:
        """The images at `positions` (0..len-1) of this source."""
        return replace(self, indices=self.indices[positions], labels=None if self.labels is None else self.labels[positions])


@dataclass
class ImageSplits:
    """Training and held-out images, the class names (None when unlabeled), and a name for the data."""

    train: ImageSource
    validation: ImageSource
    class_names: list[str] | None
    description: str


class ImageTensorDataset(torch.utils.data.Dataset):
    """Decoded, resized images (N, C, H, W) uint8 and labels (N,) held in memory; items are views, not copies."""

    def __init__(
        self, pixels: torch.Tensor, labels: torch.Tensor | None, skipped: list[str] | None = None, kept: np.ndarray | None = None
    ) -> None:
        self.pixels, self.labels, self.skipped = pixels, labels, skipped or []
        self.kept = kept  # the source positions decoded (all but the skipped ones), for data that rides along, e.g. captions

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i]}

    @property
    def num_channels(self) -> int:
        return self.pixels.shape[1]

    def labeled_sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """At most `n` (images, labels) drawn without replacement, the same ones for the same seed."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self.pixels[order], self.labels[order]


def describe_image_source(args: ImageDataArguments) -> str:
    """A short human name for the training images, used in hfssl.json and the model card."""
    if args.dataset is not None:
        from hfssl.data.text import in_memory_name

        return in_memory_name(args)
    if args.dataset_name:
        return args.dataset_name + (f"/{args.dataset_config_name}" if args.dataset_config_name else "")
    return args.train_dir or DEFAULT_IMAGE_NAME


def _scan_folder(root: str) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """Image files under `root` (hidden ones skipped); labels from first-level folders when every file is in one."""
    if not os.path.isdir(root):
        raise ValueError(f"--train_dir {root} is not a directory. Give a folder of images (one subfolder per class, or none).")
    base = Path(root)
    files = sorted(
        p
        for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(s.startswith(".") for s in p.relative_to(base).parts)
    )
    if not files:
        raise ValueError(
            f"--train_dir {root} holds no image files (.png, .jpg, .bmp, .webp, ... anything Pillow opens). "
            "Point it at a folder of images, with or without one subfolder per class."
        )
    parts = [p.relative_to(base).parts for p in files]
    if not all(len(q) >= 2 for q in parts):
        return files, None, None
    classes = sorted({q[0] for q in parts})
    return files, np.array([classes.index(q[0]) for q in parts], dtype=np.int64), classes


def _column(ds: Any, requested: str | None, option: str, defaults: Sequence[str], wanted: Callable[[Any], bool]) -> str | None:
    """The column named by --`option`, else the first of `defaults` present, else the only one `wanted` accepts."""
    if requested is not None:
        if requested not in ds.column_names:
            raise ValueError(f"--{option} {requested!r} is not in the dataset; its columns are: {', '.join(ds.column_names)}.")
        return requested
    for name in defaults:
        if name in ds.column_names:
            return name
    matching = [n for n, f in ds.features.items() if wanted(f)]
    return matching[0] if len(matching) == 1 else None


def _hub_sources(args: ImageDataArguments) -> tuple[dict[str, ImageSource], list[str] | None]:
    """Sources over the splits of `datasets.load_dataset(--dataset_name)` or of the in-memory dataset (`hfssl.run`);
    images stay encoded until decoded."""
    import datasets

    from hfssl.data.text import in_memory_dataset, load_hub_dataset

    raw = in_memory_dataset(args) if args.dataset is not None else load_hub_dataset(args.dataset_name, args.dataset_config_name)
    source = describe_image_source(args)
    if isinstance(raw, datasets.IterableDatasetDict):
        raise ValueError("dataset=: images must come as a datasets.Dataset or DatasetDict, not an iterable (streamed) one.")
    if "train" not in raw:
        raise ValueError(f"{source} has no 'train' split (found: {', '.join(raw)}).")
    first = raw["train"]
    image_col = _column(first, args.image_column, "image_column", ("image", "img"), lambda f: isinstance(f, datasets.Image))
    if image_col is None or not isinstance(first.features[image_col], datasets.Image):
        raise ValueError(
            f"Cannot tell which column of {source} holds the images ({', '.join(first.column_names)}); "
            "pass --image_column naming an image column."
        )
    label_col = _column(
        first, args.label_column, "label_column", ("label", "labels"), lambda f: isinstance(f, datasets.ClassLabel)
    )
    feature = first.features[label_col] if label_col else None
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if label_col and class_names is None:
        class_names = sorted({str(v) for v in first[label_col]})

    held_out = next((s for s in ("validation", "test") if s in raw), None)
    sources = {}
    for key, split in (("train", "train"), ("validation", held_out)):
        if split is None:
            continue
        ds = raw[split].cast_column(image_col, datasets.Image(decode=False))

        def open_row(i: int, ds: Any = ds) -> Image.Image:
            cell = ds[int(i)][image_col]
            return Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"])

        def name_row(i: int, ds: Any = ds, split: str = split) -> str:
            return ds[int(i)][image_col].get("path") or f"{source} [{split}] row {i}"

        labels = None
        if label_col:
            values = ds[label_col]
            labels = np.asarray(
                values if isinstance(feature, datasets.ClassLabel) else [class_names.index(str(v)) for v in values]
            )
        sources[key] = ImageSource(open_row, name_row, np.arange(len(ds)), labels)
    return sources, class_names


def load_image_sources(args: ImageDataArguments, seed: int = 42) -> ImageSplits:
    """Training and held-out images from the option that names them (nothing decoded yet; empty folders fail here)."""
    if args.dataset_name or args.dataset is not None:
        sources, class_names = _hub_sources(args)
    elif args.train_dir:
        files, labels, class_names = _scan_folder(args.train_dir)
        sources = {"train": ImageSource(lambda i: Image.open(files[i]), lambda i: str(files[i]), np.arange(len(files)), labels)}
    else:
        images, labels, class_names = digits_images()
        sources = {
            "train": ImageSource(
                lambda i: Image.fromarray(images[i]), lambda i: f"{DEFAULT_IMAGE_NAME} #{i}", np.arange(len(images)), labels
            )
        }
    if "validation" not in sources:
        train = sources["train"]
        if args.validation_split_percentage == 0:
            raise ValueError(
                "No held-out images: give data with a validation or test split, or a --validation_split_percentage above 0."
            )
        if len(train) < 2:
            raise ValueError(f"Only {len(train)} image found: at least 2 are needed to hold one out. Add images.")
        from sklearn.model_selection import train_test_split

        n_held = max(1, round(len(train) * args.validation_split_percentage / 100))
        balanced = train.labels is not None and n_held >= len(class_names) and np.bincount(train.labels).min() >= 2
        stratify = train.labels if balanced else None  # every class held out in proportion, when possible
        keep, held = train_test_split(np.arange(len(train)), test_size=n_held, random_state=seed, stratify=stratify)
        sources = {"train": train.subset(np.sort(keep)), "validation": train.subset(np.sort(held))}
    rng = np.random.default_rng(seed)
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None and limit < len(sources[split]):  # a random subset: folders are sorted by class
            sources[split] = sources[split].subset(np.sort(rng.permutation(len(sources[split]))[:limit]))
    return ImageSplits(sources["train"], sources["validation"], class_names, describe_image_source(args))


def _open_or_report(source: ImageSource, pos: int, skip_corrupt: bool) -> Image.Image | None:
    """Open image `pos` of `source`; a bad file raises a ValueError naming it, or gives None when skipping."""
    try:
        return source.open(source.indices[pos])
    except _BAD_IMAGE as err:
        return _report(source, pos, err, skip_corrupt)


def _report(source: ImageSource, pos: int, err: BaseException, skip_corrupt: bool) -> None:
    """Stop with an error naming the file and the option that skips it, or log the skip."""
    name = source.name(source.indices[pos])
    if not skip_corrupt:
        raise ValueError(
            f"Cannot read image {name}: {err}. Remove or replace the file, or pass "
            "--skip_corrupt_images true to skip unreadable images (they are counted in the summary)."
        ) from None
    logger.warning("Skipping unreadable image %s: %s", name, err)


def data_channels(source: ImageSource, skip_corrupt: bool) -> int:
    """1 when every image is grayscale, else 3; reads only the file headers (bad files are reported here first)."""
    for pos in range(len(source)):
        image = _open_or_report(source, pos, skip_corrupt)
        if image is not None:
            with image:
                if image.mode not in _GRAY_MODES:
                    return 3
    return 1


def image_processor(model_name_or_path: str | None, config: Any, cache_dir: str | None = None) -> Any:
    """The checkpoint's image processor, or a fresh ViT one for `config` (PIL backend: no torchvision needed)."""
    from transformers import ViTImageProcessorPil

    if model_name_or_path is not None:
        try:
            return ViTImageProcessorPil.from_pretrained(model_name_or_path, cache_dir=cache_dir)
        except OSError:
            logger.warning("%s has no image processor; using a fresh one (mean 0.5, std 0.5)", model_name_or_path)
    channels = config.num_channels
    return ViTImageProcessorPil(
        size={"height": config.image_size, "width": config.image_size}, image_mean=[0.5] * channels, image_std=[0.5] * channels
    )


def decode_images(
    source: ImageSource, processor: Any, num_channels: int, skip_corrupt: bool, chunk: int = 256
) -> ImageTensorDataset:
    """Decode, convert to `num_channels` and resize every image once, through `processor` (no rescale/normalise)."""
    mode = "L" if num_channels == 1 else "RGB"
    arrays, kept, skipped = [], [], []
    for start in range(0, len(source), chunk):
        images = []
        for pos in range(start, min(start + chunk, len(source))):
            image = _open_or_report(source, pos, skip_corrupt)
            if image is not None:
                try:
                    with image:
                        images.append(_as_8bit(image).convert(mode))  # loads the pixels: truncated files fail here
                    kept.append(pos)
                    continue
                except _BAD_IMAGE as err:
                    _report(source, pos, err, skip_corrupt)
            skipped.append(source.name(source.indices[pos]))
        if images:
            out = processor(images=images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
            arrays.append(np.asarray(out).astype(np.uint8, copy=False))
    if not kept:
        raise ValueError(f"None of the {len(source)} images could be read (first: {skipped[0]}). Check the data.")
    labels = None if source.labels is None else torch.from_numpy(source.labels[kept])
    return ImageTensorDataset(torch.from_numpy(np.concatenate(arrays)), labels, skipped, np.asarray(kept))


def _as_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images scaled to 8 bits; Pillow's `convert` would clip them
    (16-bit to white, [0, 1] floats to black).

    16-bit images are divided by 257; 32-bit and float ones are kept when in [0, 255], floats in [0, 1] are
    multiplied by 255, anything else is stretched from its own min..max. NaN or infinite pixels are an error.
    """
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    bad = int((~np.isfinite(pixels)).sum())
    if bad:
        raise ValueError(f"{bad} of its {pixels.size} pixels are NaN or infinite")
    low, high = (pixels.min(), pixels.max()) if pixels.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        pixels = pixels / 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        pixels = pixels * 255
    elif low < 0 or high > 255:
        pixels = (pixels - low) * (255 / max(high - low, 1e-12))
    return Image.fromarray(np.rint(pixels).clip(0, 255).astype(np.uint8))  # 2-D uint8: mode L


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, H, W): scaled to [0, 1], then the processor's (x - mean) / std."""
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(shape)
    return (pixels.float() / 255.0 - mean_t) / std_t


def random_resized_crop(
    pixels: torch.Tensor, min_scale: float, ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): each image cropped to a random box and resized back, in one batched resample.

    The box covers a fraction in [min_scale, 1] of the area with an aspect ratio in `ratio` (log-uniform),
    as torchvision's RandomResizedCrop, except that a box too wide or tall is clipped instead of redrawn.
    """
    b = pixels.shape[0]
    area = torch.empty(b).uniform_(min_scale, 1.0, generator=generator)
    aspect = torch.exp(torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fractions of width, height
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # box centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1).to(pixels)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class ImageBatchCollator:
    """Stacks uint8 images, augments the batch on tensors, normalises it, and adds the pretext's inputs (masks).

    `pretext_inputs(batch_size, generator)` returns extra model inputs, e.g. {"bool_masked_pos": (B, L) bool}.
    With a `seed`, every copy draws the same augmentations and masks (used for evaluation).
    """

    mean: Sequence[float]
    std: Sequence[float]
    pretext_inputs: Callable[[int, torch.Generator | None], dict[str, torch.Tensor]] | None = None
    crop_min_scale: float = 1.0
    horizontal_flip: bool = False
    seed: int | None = None
    generator: torch.Generator | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def for_evaluation(self, seed: int) -> ImageBatchCollator:
        """A copy without augmentation whose masks are the same at every evaluation (fresh generator)."""
        return replace(self, crop_min_scale=1.0, horizontal_flip=False, seed=seed)

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([item["pixel_values"] for item in items]).float()
        if self.crop_min_scale < 1.0:
            pixels = random_resized_crop(pixels, self.crop_min_scale, generator=self.generator)
        if self.horizontal_flip:
            flip = torch.rand(len(items), generator=self.generator) < 0.5
            pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        batch = {"pixel_values": normalize(pixels, self.mean, self.std)}
        if self.pretext_inputs is not None:
            batch.update(self.pretext_inputs(len(items), self.generator))
        return batch
