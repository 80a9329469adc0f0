from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hfssl.args import ImageDataArguments
from hfssl.data.images import (
    ImageBatchCollator,
    data_channels,
    decode_images,
    image_processor,
    load_image_sources,
    normalize,
    random_resized_crop,
)
from hfssl.data.samples import digits_images


class Geometry:
    """The fields of a model config that image_processor reads."""

    def __init__(self, image_size: int = 16, num_channels: int = 1) -> None:
        self.image_size, self.num_channels = image_size, num_channels


def write_images(folder, classes: dict[str, int] | None, n: int = 6, rgb_every: int = 0) -> list:
    """`n` PNGs per class folder (or directly in `folder` when classes is None); every rgb_every-th one in colour."""
    rng = np.random.default_rng(0)
    paths = []
    for cls, value in (classes or {"": 128}).items():
        target = folder / cls if cls else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(rng.normal(value, 20, (10, 12)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if rgb_every and i % rgb_every == 0:
                image = image.convert("RGB")
            paths.append(target / f"img{i}.png")
            image.save(paths[-1])
    return paths


def test_image_folder_with_class_subfolders_gives_labels(tmp_path):
    write_images(tmp_path, {"cat": 40, "dog": 200}, n=10)
    (tmp_path / "notes.txt").write_text("not an image")
    splits = load_image_sources(ImageDataArguments(train_dir=str(tmp_path), validation_split_percentage=20))
    assert splits.class_names == ["cat", "dog"]
    assert (len(splits.train), len(splits.validation)) == (16, 4)
    assert sorted(np.bincount(splits.validation.labels)) == [2, 2]  # stratified hold-out
    train = decode_images(splits.train, image_processor(None, Geometry(16, 1)), 1, skip_corrupt=False)
    assert train.shape == (16, 1, 16, 16) and train.read().dtype == torch.uint8
    # the label follows the folder: "cat" images are dark, "dog" images bright
    means = train.read().float().mean(dim=(1, 2, 3))
    assert (means[train.labels == 0] < 100).all() and (means[train.labels == 1] > 150).all()


def test_image_folder_without_class_folders_is_unlabeled(tmp_path):
    write_images(tmp_path, None, n=10, rgb_every=3)
    splits = load_image_sources(ImageDataArguments(train_dir=str(tmp_path), validation_split_percentage=20))
    assert splits.class_names is None and splits.train.labels is None
    assert len(splits.train) + len(splits.validation) == 10
    assert data_channels(splits.train, skip_corrupt=False) == 3  # some images are RGB
    train = decode_images(splits.train, image_processor(None, Geometry(8, 3)), 3, skip_corrupt=False)
    assert train.shape == (8, 3, 8, 8) and train.labels is None


def test_grayscale_folder_has_one_channel(tmp_path):
    write_images(tmp_path, {"a": 50, "b": 150})
    splits = load_image_sources(ImageDataArguments(train_dir=str(tmp_path)))
    assert data_channels(splits.train, skip_corrupt=False) == 1


def test_hub_style_dataset_by_name(tmp_path):
    """--dataset_name goes through datasets.load_dataset; a local image-folder dataset needs no network."""
    write_images(tmp_path, {"a": 40, "b": 200}, n=8)
    splits = load_image_sources(ImageDataArguments(dataset_name=str(tmp_path), validation_split_percentage=25))
    assert splits.class_names == ["a", "b"]
    assert (len(splits.train), len(splits.validation)) == (12, 4)
    held_out = decode_images(splits.validation, image_processor(None, Geometry(16, 1)), 1, skip_corrupt=False)
    means = held_out.read().float().mean(dim=(1, 2, 3))
    assert (means[held_out.labels == 0] < 100).all() and (means[held_out.labels == 1] > 150).all()


def test_digits_are_the_default_with_a_stratified_hold_out():
    splits = load_image_sources(ImageDataArguments(validation_split_percentage=10))
    assert splits.description == "sklearn-digits" and splits.class_names == [str(i) for i in range(10)]
    assert (len(splits.train), len(splits.validation)) == (1617, 180)
    assert np.bincount(splits.validation.labels).min() >= 17
    held_out = decode_images(splits.validation, image_processor(None, Geometry(16, 1)), 1, skip_corrupt=False)
    images, labels, _ = digits_images()
    first = splits.validation.indices[0]
    upsampled = torch.nn.functional.interpolate(
        torch.tensor(images[first], dtype=torch.float32)[None, None], size=16, mode="bilinear"
    )
    assert held_out.labels[0] == labels[first]
    assert torch.corrcoef(torch.stack([held_out.read([0])[0].float().flatten(), upsampled.flatten()]))[0, 1] > 0.95


@pytest.mark.parametrize("make", ["empty", "no_images", "missing"])
def test_folder_without_images_fails_naming_the_option(tmp_path, make):
    folder = tmp_path / "data"
    if make != "missing":
        folder.mkdir()
    if make == "no_images":
        (folder / "readme.txt").write_text("hello")
        (folder / ".hidden.png").write_bytes(b"")
    with pytest.raises(ValueError, match="--train_dir"):
        load_image_sources(ImageDataArguments(train_dir=str(folder)))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_stops_naming_the_file_or_is_skipped(tmp_path, damage):
    paths = write_images(tmp_path, {"a": 50, "b": 200}, n=5)
    bad = paths[3]
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a png" if damage == "garbage" else data[: len(data) // 2])
    splits = load_image_sources(ImageDataArguments(train_dir=str(tmp_path), validation_split_percentage=20))
    source = next(s for s in (splits.train, splits.validation) if str(bad) in [s.name(i) for i in s.indices])
    processor = image_processor(None, Geometry(8, 1))
    with pytest.raises(ValueError, match=rf"{bad.name}.*--skip_corrupt_images"):
        decode_images(source, processor, 1, skip_corrupt=False)
    kept = decode_images(source, processor, 1, skip_corrupt=True)
    assert kept.skipped == [str(bad)]
    assert len(kept) == len(source) - 1 and len(kept.labels) == len(kept)


def test_normalize_uses_the_processor_statistics():
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    assert normalize(pixels, [0.5], [0.5]).flatten().tolist() == [-1.0, 1.0]
    rgb = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(rgb, [0.5, 0.0, 1.0], [0.5, 1.0, 0.5]).flatten(), torch.tensor([1.0, 1.0, 0.0]))


def test_random_resized_crop_at_full_scale_is_the_identity_and_otherwise_zooms_in():
    pixels = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    same = random_resized_crop(pixels, min_scale=1.0, ratio=(1.0, 1.0))
    assert torch.allclose(same, pixels, atol=1e-4)
    # a centred bright square grows when the crop zooms in
    square = torch.zeros(64, 1, 16, 16)
    square[:, :, 6:10, 6:10] = 1
    cropped = random_resized_crop(square, min_scale=0.3, generator=torch.Generator().manual_seed(0))
    assert cropped.shape == square.shape
    assert cropped.sum(dim=(1, 2, 3)).mean() > square[0].sum() * 1.2


def test_collator_masks_are_fixed_in_evaluation_and_fresh_in_training():
    def masks(n: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"noise": torch.rand(n, 4, generator=generator)}

    items = [{"pixel_values": torch.full((1, 8, 8), 255, dtype=torch.uint8)} for _ in range(3)]
    train = ImageBatchCollator([0.5], [0.5], masks, crop_min_scale=0.5, horizontal_flip=True)
    a, b = train(items), train(items)
    assert a["pixel_values"].shape == (3, 1, 8, 8) and a["pixel_values"].dtype == torch.float32
    assert not torch.equal(a["noise"], b["noise"])
    first, second = train.for_evaluation(7)(items), train.for_evaluation(7)(items)
    assert torch.equal(first["noise"], second["noise"])
    assert torch.equal(first["pixel_values"], torch.ones(3, 1, 8, 8))  # no augmentation, normalised white


def test_sample_limits_draw_from_every_class_of_a_sorted_folder(tmp_path):
    write_images(tmp_path, {"a": 50, "b": 200}, n=10)
    args = ImageDataArguments(train_dir=str(tmp_path), validation_split_percentage=20, max_train_samples=6, max_eval_samples=2)
    splits = load_image_sources(args)
    assert (len(splits.train), len(splits.validation)) == (6, 2)
    assert set(splits.train.labels.tolist()) == {0, 1}  # the first 6 files would all be class "a"
    assert np.array_equal(load_image_sources(args).train.indices, splits.train.indices)  # the same for the same seed


class Counting:
    """An image source's `open` that counts the images it opened."""

    def __init__(self, images: list[Image.Image]) -> None:
        self.images, self.opened = images, 0

    def __call__(self, i: int) -> Image.Image:
        self.opened += 1
        return self.images[i].copy()


def counted_source(n: int, identity: str | None, side: int = 12, seed: int = 0):
    from hfssl.data.images import ImageSource

    rng = np.random.default_rng(seed)
    opener = Counting([Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)])
    labels = np.arange(n) % 3
    return ImageSource(opener, lambda i: f"image #{i}", np.arange(n), labels, identity), opener


def test_images_are_decoded_once_into_a_cache_that_later_runs_reuse(tmp_path):
    cache = str(tmp_path / "cache")
    processor = image_processor(None, Geometry(8, 3))
    source, opener = counted_source(20, "test images v1")
    first = decode_images(source, processor, 3, skip_corrupt=False, cache_dir=cache)
    assert opener.opened >= 20 and first.shape == (20, 3, 8, 8)
    opened = opener.opened
    again = decode_images(source, processor, 3, skip_corrupt=False, cache_dir=cache)
    assert opener.opened == opened  # nothing decoded: read from the cache
    assert torch.equal(again.read(), first.read()) and torch.equal(again.labels, first.labels)
    # the items are what the processor makes of each image (resized, not normalised)
    direct = processor(images=[source.open(i) for i in range(20)], do_rescale=False, do_normalize=False, return_tensors="np")
    assert torch.equal(first.read(), torch.from_numpy(np.asarray(direct["pixel_values"]).astype(np.uint8)))
    assert torch.equal(first[5]["pixel_values"], first.read([5])[0])
    # another size, another subset, or other content: another cache entry
    decode_images(source, image_processor(None, Geometry(16, 3)), 3, skip_corrupt=False, cache_dir=cache)
    decode_images(source.subset(np.arange(10)), processor, 3, skip_corrupt=False, cache_dir=cache)
    decode_images(counted_source(20, "test images v2")[0], processor, 3, skip_corrupt=False, cache_dir=cache)
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 4


def test_a_changed_image_file_is_decoded_again(tmp_path):
    import os

    from hfssl.data.images import files_source

    paths = write_images(tmp_path / "data", None, n=4)
    before = files_source(paths, None).identity
    os.utime(paths[0], ns=(1, 1))
    assert files_source(paths, None).identity != before


def test_a_source_without_identity_gets_a_private_cache_removed_with_the_data(tmp_path):
    import gc

    source, _ = counted_source(6, None)
    images = decode_images(source, image_processor(None, Geometry(8, 3)), 3, skip_corrupt=False, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1 and len(images) == 6
    del images
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_memory_held_while_reading_does_not_grow_with_the_number_of_images(tmp_path):
    """Iterating over every batch of 4x more images allocates no more at its peak: the pixels stay on disk (in the
    kernel's page cache), and each batch is read when asked for."""
    import pickle
    import tracemalloc

    processor = image_processor(None, Geometry(32, 3))
    peaks = []
    for n in (64, 256):
        images = decode_images(counted_source(n, f"memory test {n}", side=32)[0], processor, 3, False, str(tmp_path))
        loader = torch.utils.data.DataLoader(
            images, batch_size=16, shuffle=True, collate_fn=ImageBatchCollator([0.5] * 3, [0.5] * 3)
        )
        tracemalloc.start()
        seen = sum(len(batch["pixel_values"]) for batch in loader)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert seen == n
        assert len(pickle.dumps(images)) < 100 + 40 * n  # what a DataLoader worker receives: indices, not pixels
    assert peaks[1] < 1.15 * peaks[0], peaks


def test_a_cache_larger_than_the_free_disk_fails_before_decoding(tmp_path, monkeypatch):
    import shutil

    source, opener = counted_source(10, "too big")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(ValueError, match="--image_cache_dir"):
        decode_images(source, image_processor(None, Geometry(8, 3)), 3, skip_corrupt=False, cache_dir=str(tmp_path))
    assert opener.opened <= 1  # the first image, for its decoded size


def test_skipped_images_are_remembered_by_the_cache(tmp_path, caplog):
    source, opener = counted_source(8, "with a bad one")
    good = opener.images[3]
    opener.images[3] = type("Broken", (), {"copy": lambda self: (_ for _ in ()).throw(OSError("broken data stream"))})()
    processor = image_processor(None, Geometry(8, 3))
    first = decode_images(source, processor, 3, skip_corrupt=True, cache_dir=str(tmp_path))
    assert first.skipped == ["image #3"] and first.labels.tolist() == [0, 1, 2, 1, 2, 0, 1]
    opener.images[3] = good  # the cache is keyed by the identity: the file is still taken as unreadable
    with caplog.at_level("WARNING"):
        again = decode_images(source, processor, 3, skip_corrupt=True, cache_dir=str(tmp_path))
    assert again.skipped == ["image #3"] and "image #3" in caplog.text
    assert torch.equal(again.read(), first.read())
