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

import hashlib
import io
import json
import logging
import math
import os
import shutil
import uuid
import weakref
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
    "DecodingCollator",
    "ImageBatchCollator",
    "ImageStream",
    "ImageSource",
    "ImageSplits",
    "DecodedImages",
    "ImageRows",
    "data_channels",
    "decode_images",
    "describe_image_source",
    "image_processor",
    "load_image_sources",
    "load_image_stream",
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
    # What names the images' content (files with their sizes and times, a dataset's fingerprint), with `indices`
    # the key of their decoded cache; None when unknown (the images are then decoded into a private cache).
    identity: str | None = None

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


class DecodedImages(torch.utils.data.Dataset):
    """Decoded, resized uint8 images (C, H, W) and their labels, read from an on-disk cache or held in a tensor.

    The cache is one file of fixed-size records (see `decode_images`). Items are read with `os.pread` when asked
    for, so the pixels live in the kernel's page cache, once for every process on the machine, and never in a
    process's own memory: the memory of a run does not grow with the number of images. `__getitems__` reads a
    whole batch at once (torch's DataLoader calls it when present).
    """

    def __init__(
        self,
        pixels: torch.Tensor | _RecordFile,
        labels: torch.Tensor | None,
        skipped: list[str] | None = None,
        kept: np.ndarray | None = None,
    ) -> None:
        self.store, self.labels, self.skipped = pixels, labels, skipped or []
        self.kept = kept  # the source positions decoded (all but the skipped ones), for data that rides along, e.g. captions
        # record of each item: the cache holds a slot for every source image, skipped ones included
        self.records = np.arange(len(pixels)) if isinstance(pixels, torch.Tensor) or kept is None else kept

    def __len__(self) -> int:
        return len(self.records)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.store.shape[1:])

    @property
    def num_channels(self) -> int:
        return self.store.shape[1]

    def read(self, positions: Sequence[int] | np.ndarray | slice | None = None) -> torch.Tensor:
        """The uint8 images (n, C, H, W) at `positions` (all of them when None), in that order."""
        chosen = self.records if positions is None else self.records[positions]
        if isinstance(self.store, torch.Tensor):
            return self.store[torch.as_tensor(chosen, dtype=torch.long)]
        return self.store.read(chosen)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.read([i])[0]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        return [{"pixel_values": image} for image in self.read(indices)]

    def labeled_sample(self, n: int, seed: int = 0) -> tuple[ImageRows, torch.Tensor]:
        """At most `n` (images, labels) drawn without replacement, the same ones for the same seed; the images
        are a lazy view, read batch by batch by whoever uses them."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()
        return ImageRows(self, order), self.labels[order]


@dataclass
class ImageRows:
    """Some images of a DecodedImages, read only when sliced: `rows[a:b]` is a uint8 tensor (b - a, C, H, W)."""

    images: DecodedImages
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: slice) -> torch.Tensor:
        return self.images.read(self.positions[key])


class _RecordFile:
    """Fixed-size uint8 records (N, C, H, W) in one file, read with os.pread.

    Written here because none of the field's libraries reads such records without memory-mapping them: datasets'
    Arrow tables and numpy's memmap both map the file, and every page a process touches then counts in its own
    memory (RSS) until the kernel reclaims it. A pread copies only the batch asked for.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, tuple(shape)
        self.record = int(np.prod(self.shape[1:]))
        self._fd, self._pid = -1, -1

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers started by spawn open their own descriptor
        return {**self.__dict__, "_fd": -1, "_pid": -1}

    def _descriptor(self) -> int:
        if self._pid != os.getpid():  # a fresh process (fork or spawn): pread needs no shared file position, but
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()  # one descriptor per process is cleanest
        return self._fd

    def read(self, records: np.ndarray) -> torch.Tensor:
        fd = self._descriptor()
        out = np.empty((len(records), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(records), self.record)
        for k, r in enumerate(np.asarray(records, dtype=np.int64)):
            if os.preadv(fd, [flat[k]], int(r) * self.record) != self.record:
                raise OSError(f"The image cache {self.path} is shorter than its {self.shape[0]} images: delete it to rebuild.")
        return torch.from_numpy(out)

    def __del__(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)


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


def files_source(files: list[Path], labels: np.ndarray | None) -> ImageSource:
    """The image files as a source; each file's path, size and modification time name its content."""
    listing = "\n".join(f"{p.resolve()}\t{(st := p.stat()).st_size}\t{st.st_mtime_ns}" for p in files)
    identity = "files " + hashlib.sha256(listing.encode()).hexdigest()
    return ImageSource(lambda i: Image.open(files[i]), lambda i: str(files[i]), np.arange(len(files)), labels, identity)


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
        sources[key] = ImageSource(open_row, name_row, np.arange(len(ds)), labels, f"dataset {ds._fingerprint}")
    return sources, class_names


@dataclass
class ImageStream:
    """A streamed Hub image dataset: the training stream (encoded images, decoded per batch by a DecodingCollator),
    the held-out images and a labeled sample of training images for the probes, both read once and cached."""

    train: Any  # datasets.IterableDataset of {"image": {"bytes", "path"}}
    validation: ImageSource
    probe_train: ImageSource | None
    class_names: list[str] | None
    description: str


def load_image_stream(args: ImageDataArguments, seed: int = 42, probe_samples: int = 0) -> ImageStream:
    """--streaming: the Hub dataset read as it downloads. The held-out images are the first --max_eval_samples
    (default 1000) of its validation or test split, else the first ones of its training stream, which training
    then skips; the probes' training sample is the next `probe_samples` training images (labeled data only)."""
    import datasets

    from hfssl.data.text import load_hub_dataset

    raw = load_hub_dataset(args.dataset_name, args.dataset_config_name, streaming=True)
    source = describe_image_source(args)
    if "train" not in raw:
        raise ValueError(f"{source} has no 'train' split (found: {', '.join(raw)}).")
    features = raw["train"].features
    if features is None:  # not declared by the dataset: read from its first row
        features = next(iter(raw["train"].take(1).decode(False)))
        features = datasets.Features({k: datasets.Image() for k, v in features.items() if isinstance(v, dict) and "bytes" in v})
    first = type("Columns", (), {"column_names": list(features), "features": features})()
    image_col = _column(first, args.image_column, "image_column", ("image", "img"), lambda f: isinstance(f, datasets.Image))
    if image_col is None or not isinstance(features.get(image_col), datasets.Image):
        raise ValueError(
            f"Cannot tell which column of {source} holds the images ({', '.join(features)}); pass --image_column naming "
            "an image column."
        )
    is_label = lambda f: isinstance(f, datasets.ClassLabel)  # noqa: E731
    label_col = _column(first, args.label_column, "label_column", ("label", "labels"), is_label)
    feature = features.get(label_col) if label_col else None
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    label_col = label_col if class_names else None  # the probes need class labels they can name

    def undecoded(ds: Any) -> Any:
        keep = [image_col] + ([label_col] if label_col else [])
        return ds.select_columns(keep).cast_column(image_col, datasets.Image(decode=False))

    held_n = args.max_eval_samples or 1000
    train = undecoded(raw["train"])
    held_split = next((s for s in ("validation", "test") if s in raw), None)
    held_rows = list((undecoded(raw[held_split]) if held_split else train).take(held_n))
    if held_split is None:
        train = train.skip(len(held_rows))
    probe_rows = list(train.take(probe_samples)) if label_col and probe_samples else []

    def rows_source(rows: list[dict], what: str) -> ImageSource:
        def open_row(i: int) -> Image.Image:
            cell = rows[int(i)][image_col]
            return Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"])

        def name_row(i: int) -> str:
            return rows[int(i)][image_col].get("path") or f"{source} [{what}] row {i}"

        labels = np.asarray([r[label_col] for r in rows]) if label_col else None
        identity = (
            f"stream {source} {what} first {len(rows)} "
            + hashlib.sha256(
                b"".join((r[image_col].get("bytes") or str(r[image_col].get("path")).encode()) for r in rows)
            ).hexdigest()
        )
        return ImageSource(open_row, name_row, np.arange(len(rows)), labels, identity)

    if not held_rows:
        raise ValueError(f"{source}: the stream gave no images to hold out.")
    if args.max_train_samples is not None:
        train = train.take(args.max_train_samples)
    train = train.shuffle(seed=seed, buffer_size=10_000).select_columns([image_col])
    if image_col != "image":
        train = train.rename_column(image_col, "image")
    return ImageStream(
        train,
        rows_source(held_rows, held_split or "train, held out"),
        rows_source(probe_rows, "train, probe sample") if probe_rows else None,
        class_names,
        source,
    )


@dataclass
class DecodingCollator:
    """Decodes and resizes a batch of encoded images ({"image": {"bytes", "path"}} items of a stream) through the
    image processor, then hands the uint8 pixels to `images` (an ImageBatchCollator). It runs in the DataLoader's
    workers when --dataloader_num_workers is given. An unreadable image stops the run naming it, or is dropped
    from its batch with --skip_corrupt_images."""

    images: ImageBatchCollator
    processor: Any
    num_channels: int
    skip_corrupt: bool

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        cells = [item["image"] for item in items]
        source = ImageSource(
            lambda i: Image.open(io.BytesIO(cells[i]["bytes"]) if cells[i].get("bytes") else cells[i]["path"]),
            lambda i: cells[i].get("path") or "a streamed image",
            np.arange(len(cells)),
            None,
        )
        mode = "L" if self.num_channels == 1 else "RGB"
        pixels, skipped = _decode_chunk(source, range(len(cells)), self.processor, mode, self.skip_corrupt)
        if pixels is None:
            raise ValueError(f"None of the {len(cells)} images of a batch could be read: check the data.")
        keep = np.setdiff1d(np.arange(len(cells)), skipped)
        return self.images([{"pixel_values": torch.from_numpy(p)} for p in pixels[keep]])

    def for_evaluation(self, seed: int) -> ImageBatchCollator:
        return self.images.for_evaluation(seed)


def load_image_sources(args: ImageDataArguments, seed: int = 42) -> ImageSplits:
    """Training and held-out images from the option that names them (nothing decoded yet; empty folders fail here)."""
    if args.dataset_name or args.dataset is not None:
        sources, class_names = _hub_sources(args)
    elif args.train_dir:
        files, labels, class_names = _scan_folder(args.train_dir)
        sources = {"train": files_source(files, labels)}
    else:
        images, labels, class_names = digits_images()
        sources = {
            "train": ImageSource(
                lambda i: Image.fromarray(images[i]),
                lambda i: f"{DEFAULT_IMAGE_NAME} #{i}",
                np.arange(len(images)),
                labels,
                f"embedded {DEFAULT_IMAGE_NAME}",
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


CACHE_FORMAT = 1  # bump when the records' layout or the decoding changes, so old caches are not reused


def image_cache_root(cache_dir: str | None = None) -> Path:
    """Where decoded images are cached: `cache_dir`, else $HFSSL_CACHE/images, else ~/.cache/hfssl/images."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("HFSSL_CACHE", Path.home() / ".cache" / "hfssl")) / "images"


def _cache_key(source: ImageSource, processor: Any, mode: str) -> str | None:
    if source.identity is None:
        return None
    digest = hashlib.sha256()
    for part in (str(CACHE_FORMAT), source.identity, mode, processor.to_json_string()):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(source.indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:24]


def _decode_chunk(
    source: ImageSource, positions: range, processor: Any, mode: str, skip_corrupt: bool
) -> tuple[np.ndarray | None, list[int]]:
    """Decode the images at `positions`: a uint8 array with a slot per position (zeros where skipped) and the
    skipped positions."""
    images, kept, skipped = [], [], []
    for pos in positions:
        image = _open_or_report(source, pos, skip_corrupt)
        if image is not None:
            try:
                with image:
                    images.append(_as_8bit(image).convert(mode))  # loads the pixels: truncated files fail here
                kept.append(pos - positions.start)
                continue
            except _BAD_IMAGE as err:
                _report(source, pos, err, skip_corrupt)
        skipped.append(pos)
    if not images:
        return None, skipped
    out = np.asarray(processor(images=images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"])
    full = np.zeros((len(positions), *out.shape[1:]), dtype=np.uint8)
    full[kept] = out.astype(np.uint8, copy=False)
    return full, skipped


def decode_images(
    source: ImageSource,
    processor: Any,
    num_channels: int,
    skip_corrupt: bool,
    cache_dir: str | None = None,
    chunk: int = 64,
) -> DecodedImages:
    """Decode, convert to `num_channels` and resize every image once, through `processor` (no rescale/normalise),
    into an on-disk cache that later runs with the same images and processor reuse.

    Under a launch of W processes, each decodes its 1/W of the images into the one shared file, so no process
    decodes everything and the cache is built once. Pillow decodes and resizes without holding the GIL, so each
    process decodes on threads, one per core it has.
    """
    from accelerate import PartialState

    state = PartialState()
    mode = "L" if num_channels == 1 else "RGB"
    root = image_cache_root(cache_dir)
    key = _cache_key(source, processor, mode)
    keyed = key is not None
    if not keyed:  # a source that cannot name its content: a private cache, removed when the data is
        key = f"tmp-{uuid.uuid4().hex}"
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            key = broadcast_object_list([key])[0]  # the main process's name, on every process
    final, building = root / key, root / f"{key}.partial"
    reused = (final / "meta.json").exists()
    if not reused:
        if len(source) == 0:
            raise ValueError("No images to decode: the split is empty. Check --max_train_samples / --max_eval_samples.")
        shape = _probe_shape(source, processor, mode, skip_corrupt)
        if state.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            need = len(source) * int(np.prod(shape))
            free = shutil.disk_usage(root).free
            if need > free * 0.95:
                raise ValueError(
                    f"Decoding these {len(source):,} images needs {need / 2**30:.1f} GiB in the image cache {root}, "
                    f"which has {free / 2**30:.1f} GiB free. Point --image_cache_dir at a larger disk, or lower --image_size."
                )
            shutil.rmtree(building, ignore_errors=True)  # a build that was interrupted
            building.mkdir(parents=True)
            with open(building / "pixels.u8", "wb") as f:
                f.truncate(need)  # sparse until written
        state.wait_for_everyone()
        mine = np.array_split(np.arange(len(source)), state.num_processes)[state.process_index]
        try:
            skipped = _decode_into(building / "pixels.u8", source, mine, processor, mode, skip_corrupt, shape, chunk)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)  # a bad image stops every process: leave no half-built cache
            raise
        # what each process decoded stays in the cache, a record of how it was built
        shard = dict(process=state.process_index, first=int(mine[0]) if len(mine) else None, decoded=len(mine), skipped=skipped)
        (building / f"shard.{state.process_index}.json").write_text(json.dumps(shard))
        state.wait_for_everyone()
        if state.is_main_process:
            parts = (json.loads((building / f"shard.{r}.json").read_text()) for r in range(state.num_processes))
            skipped = sorted(p for part in parts for p in part["skipped"])
            meta = dict(format=CACHE_FORMAT, shape=[len(source), *shape], skipped=skipped, images=len(source))
            (building / "meta.json").write_text(json.dumps(meta))
            if final.exists():  # a concurrent run built the same cache: keep one
                shutil.rmtree(building)
            else:
                os.replace(building, final)
            size = len(source) * np.prod(shape) / 1e6
            logger.info("Decoded %d images into the image cache %s (%.1f MB)", len(source), final, size)
        state.wait_for_everyone()
    meta = json.loads((final / "meta.json").read_text())
    skipped_positions = meta["skipped"]
    if len(skipped_positions) == len(source):
        first = source.name(source.indices[0])
        raise ValueError(f"None of the {len(source)} images could be read (first: {first}). Check the data.")
    for pos in skipped_positions if reused else ():
        logger.warning("Skipping unreadable image %s (as recorded in the image cache)", source.name(source.indices[pos]))
    kept = np.setdiff1d(np.arange(len(source)), skipped_positions)
    labels = None if source.labels is None else torch.from_numpy(source.labels[kept])
    names = [source.name(source.indices[p]) for p in skipped_positions]
    images = DecodedImages(_RecordFile(final / "pixels.u8", tuple(meta["shape"])), labels, names, kept)
    if not keyed and state.is_main_process:
        weakref.finalize(images, shutil.rmtree, final, True)
    return images


def _probe_shape(source: ImageSource, processor: Any, mode: str, skip_corrupt: bool) -> tuple[int, ...]:
    """(C, H, W) the processor makes of these images: of the first readable one."""
    for pos in range(len(source)):
        array, _ = _decode_chunk(source, range(pos, pos + 1), processor, mode, skip_corrupt)  # a bad file stops here
        if array is not None:
            return tuple(array.shape[1:])
    raise ValueError(f"None of the {len(source)} images could be read (first: {source.name(source.indices[0])}). Check the data.")


def _decode_into(
    path: Path,
    source: ImageSource,
    positions: np.ndarray,
    processor: Any,
    mode: str,
    skip_corrupt: bool,
    shape: tuple[int, ...],
    chunk: int,
) -> list[int]:
    """Decode `positions` (a contiguous run) into their records of `path`, on threads; the skipped positions."""
    from concurrent.futures import ThreadPoolExecutor

    if len(positions) == 0:
        return []
    record = int(np.prod(shape))
    starts = range(int(positions[0]), int(positions[-1]) + 1, chunk)
    ranges = [range(a, min(a + chunk, int(positions[-1]) + 1)) for a in starts]
    skipped: list[int] = []
    threads = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    fd = os.open(path, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(threads) as pool:
            window = 2 * threads  # chunks in flight: what decoding holds in memory does not grow with the images
            for w in range(0, len(ranges), window):
                spans = ranges[w : w + window]
                decoded = pool.map(lambda r: _decode_chunk(source, r, processor, mode, skip_corrupt), spans)
                for span, (array, bad) in zip(spans, decoded, strict=True):
                    skipped.extend(bad)
                    if array is None:
                        continue
                    if array.shape[1:] != shape:
                        raise ValueError(
                            f"Image {source.name(source.indices[span.start])} came out of the image processor as "
                            f"{array.shape[1:]}, not {shape} like the first one: give the processor a fixed size."
                        )
                    os.pwrite(fd, np.ascontiguousarray(array).data, span.start * record)
    finally:
        os.close(fd)
    return skipped


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
