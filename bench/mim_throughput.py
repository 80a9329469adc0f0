"""Masked-autoencoder (MAE) pretraining throughput: the stock transformers recipe vs hfssl's default path.

Both train the same `ViTMAEForPreTraining` on the same real images for the same number of steps, in two
cases:

- 28 px: hfssl's tiny preset (4 encoder layers x 192, a 2-layer decoder, 4x4 patches) on 28x28 grayscale
  Fashion-MNIST training images, written once as PNG files;
- 224 px: the ViT-small preset (12 layers x 384, 16x16 patches) on 224x224 RGB JPEGs (quality 90): random
  crops of the two photographs scikit-learn ships (china.jpg, flower.jpg), resized to 224 px.

The paths:

  (a) stock: what transformers' examples/pytorch/image-pretraining/run_mae.py does: a `datasets`
      image folder with per-sample transforms (decode, RandomResizedCrop(scale 0.2-1, bicubic),
      RandomHorizontalFlip, to tensor, normalise; written with PIL + numpy here because hfssl
      avoids torchvision), `Trainer`, default precision (fp32), no data-loader workers;
  (b) hfssl: recipes/mim.py itself with its defaults (images decoded once into the on-disk image cache
      and read per batch, crops and masks drawn per batch on tensors, bf16 autocast where supported,
      matmul attention on CPU in encoder and decoder), given the stock path's augmentation (crops down
      to 20% of the area, flips) so that both do the same work per image;
  (c) at 28 px only, hfssl in RAM: the same recipe with every decoded image held in one in-memory tensor
      (how hfssl held images before its on-disk cache): the cost of reading batches from the cache.

Every run is a fresh process (hfssl's recipe tunes malloc process-wide; the stock path keeps the C
library's defaults, as run_mae.py would). Both are timed by the same step callback; the rate
excludes the first three steps (start-up, and hfssl's one-time decoding into its cache, whose time
is printed apart). The paths run in alternating rounds (stock, hfssl, ..., stock, hfssl, ...) and each
ratio is the median of the per-round ratios: on a shared virtual machine the rate of one path drifts by
20% or more between minutes, and a ratio of two runs taken back to back is steadier than either rate.
It prints images/s of each path in each round and the ratios. The last line is
`mae_speedup_28px=X mae_speedup_224px=Y cache_vs_ram_28px=Z`.

    python bench/mim_throughput.py [--quick] [--cases 28px,224px] [--rounds R] [--stock_keep_freed_memory]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from step_timer import StepTimer, in_fresh_process  # noqa: E402  (bench/ is on sys.path when run as a script)
from transformers import Trainer, TrainingArguments, ViTMAEConfig, ViTMAEForPreTraining, set_seed  # noqa: E402

from hfssl.models import VISION_PRESETS  # noqa: E402
from hfssl.registry import load_recipe  # noqa: E402
from hfssl.runtime import bf16_supported, hardware_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")  # Debian package dataset-fashion-mnist
MEAN, STD = 0.5, 0.5  # ViTImageProcessor's defaults, used by both paths


@dataclass(frozen=True)
class Case:
    """One image size: the preset, the images and how long each run trains."""

    name: str
    preset: str
    size: int
    patch: int
    channels: int
    batch: int
    steps: int
    quick_steps: int
    images: int
    quick_images: int

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


CASES = {
    "28px": Case("28px", "tiny", 28, 4, 1, 128, 100, 30, 20_000, 4_000),
    "224px": Case("224px", "small", 224, 16, 3, 32, 16, 10, 2_000, 600),
}


def write_fashion(folder: Path, count: int) -> None:
    """The first `count` Fashion-MNIST training images as PNG files (what a user's image folder holds)."""
    if not FASHION.exists():
        sys.exit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    folder.mkdir(parents=True)
    for i, image in enumerate(pixels[:count]):
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")


def write_photo_crops(folder: Path, count: int, size: int = 224) -> None:
    """`count` JPEGs (quality 90) of `size` px: random crops (a quarter to all of the short side) of scikit-learn's
    two sample photographs, resized: real photographic content, as costly to decode as a user's photos."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = rng.randint(min(photo.size) // 4, min(photo.size))
        left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crop = photo.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
        crop.save(folder / f"{i:05d}.jpg", quality=90)


def stock_transform(image: Image.Image, case: Case) -> torch.Tensor:
    """run_mae.py's per-sample pipeline with PIL: RandomResizedCrop(0.2-1, bicubic), flip, to tensor, normalise."""
    image = image.convert(case.mode)
    width, height = image.size
    for _ in range(10):  # torchvision's RandomResizedCrop.get_params
        area = width * height * random.uniform(0.2, 1.0)
        ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            top, left = random.randint(0, height - h), random.randint(0, width - w)
            break
    else:
        top, left, w, h = 0, 0, width, height
    image = image.resize((case.size, case.size), Image.BICUBIC, box=(left, top, left + w, top + h))
    if random.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - MEAN) / STD
    return torch.from_numpy(array[None] if case.channels == 1 else array.transpose(2, 0, 1).copy())


def train_stock(case: Case, folder: Path, steps: int, out: str, keep_freed_memory: bool = False) -> float:
    from datasets import load_dataset

    if keep_freed_memory:  # the --stock_keep_freed_memory check: hfssl's malloc setting on the stock path
        from hfssl.runtime import keep_freed_memory as keep

        keep()
    dataset = load_dataset("imagefolder", data_dir=str(folder), split="train")
    dataset = dataset.with_transform(lambda rows: {"pixel_values": [stock_transform(im, case) for im in rows["image"]]})
    preset = VISION_PRESETS[case.preset] | dict(image_size=case.size, patch_size=case.patch, num_channels=case.channels)
    set_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**preset, mask_ratio=0.75))
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=case.batch,
        max_steps=steps,
        learning_rate=1e-3,
        weight_decay=0.05,
        remove_unused_columns=False,
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )
    timer = StepTimer()
    collate = lambda rows: {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}  # noqa: E731 (run_mae.py's)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[timer]).train()
    return timer.rate(case.batch)


def held_in_ram(images):  # noqa: ANN001, ANN201
    """The decoded images moved from the on-disk cache into one in-memory tensor, items indexed from it."""
    from hfssl.data.images import DecodedImages

    return DecodedImages(images.read(), images.labels, images.skipped, images.kept)


def train_hfssl(case: Case, folder: Path, steps: int, out: str, cache: str, in_ram: bool = False) -> tuple[float, float]:
    """(images/s over the timed steps, seconds spent decoding images before training)."""
    recipe = load_recipe("mim")
    timer = StepTimer()
    original_trainer, original_decode = recipe.MaskedImageTrainer, recipe.decode_images
    decoding = []

    class WithStepTimer(original_trainer):  # the recipe's own trainer, plus the shared step timer
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), timer]
            super().__init__(*args, **kwargs)

    def timed_decode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        images = original_decode(*args, **kwargs)
        if in_ram:
            images = held_in_ram(images)
        decoding.append(time.perf_counter() - start)
        return images

    recipe.MaskedImageTrainer, recipe.decode_images = WithStepTimer, timed_decode
    try:
        _run_mim(recipe, case, folder, steps, out, cache)
    finally:
        recipe.MaskedImageTrainer, recipe.decode_images = original_trainer, original_decode
    return timer.rate(case.batch), sum(decoding)


def _run_mim(recipe, case: Case, folder: Path, steps: int, out: str, cache: str) -> None:  # noqa: ANN001
    options = dict(
        train_dir=folder,
        model_preset=case.preset,
        image_size=case.size,
        patch_size=case.patch,
        per_device_train_batch_size=case.batch,
        max_steps=steps,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm="true",
        seed=0,
        crop_min_scale=0.2,
        horizontal_flip="true",  # the stock path's augmentation, not hfssl's defaults
        image_cache_dir=cache,
        output_dir=out,
    )
    recipe.main([f"--{k}={v}" for k, v in options.items()])


def run_case(case: Case, args: argparse.Namespace, work: Path) -> dict:
    steps = args.steps or (case.quick_steps if args.quick else case.steps)
    count = case.quick_images if args.quick else case.images
    folder = work / case.name
    (write_fashion if case.size == 28 else write_photo_crops)(folder, count)
    print(
        f"{case.name}: {case.preset} preset, {count:,} {'Fashion-MNIST PNGs' if case.size == 28 else 'photo-crop JPEGs'}, "
        f"{steps} steps x {case.batch} images"
        + ("; the stock path also keeps freed memory" if args.stock_keep_freed_memory else ""),
        flush=True,
    )
    arms = ("stock", "hfssl", "hfssl_in_ram") if case.size == 28 else ("stock", "hfssl")
    rounds = []
    for r in range(args.rounds):
        # Each run in a fresh process: hfssl's recipe tunes malloc process-wide, the stock path must not inherit it.
        row = {}
        for arm in arms:
            out = str(work / f"{case.name}-{arm}{r}")
            if arm == "stock":
                row["stock_images_per_s"] = in_fresh_process(train_stock, case, folder, steps, out, args.stock_keep_freed_memory)
            else:  # the first hfssl run decodes into the cache; the others reuse it
                rate, decode = in_fresh_process(train_hfssl, case, folder, steps, out, str(work / "cache"), arm != "hfssl")
                row[f"{arm}_images_per_s"], row[f"{arm}_decode_s"] = rate, decode
        row["speedup"] = row["hfssl_images_per_s"] / row["stock_images_per_s"]
        if "hfssl_in_ram_images_per_s" in row:
            row["cache_vs_ram"] = row["hfssl_images_per_s"] / row["hfssl_in_ram_images_per_s"]
        rounds.append(row)
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{arm} {row[f'{arm}_images_per_s']:,.1f} images/s" for arm in arms)
            + f"; hfssl/stock {row['speedup']:.2f}x"
            + (f"; cache/in-RAM {row['cache_vs_ram']:.3f}" if "cache_vs_ram" in row else "")
            + f"; decoding {row['hfssl_decode_s']:.1f} s",
            flush=True,
        )
    result = dict(case=case.__dict__, steps=steps, images=count, rounds=rounds)
    for key in ("speedup", "cache_vs_ram"):
        if key in rounds[0]:
            result[key] = statistics.median(r[key] for r in rounds)
    for arm in arms:
        result[f"{arm}_images_per_s"] = statistics.mean(r[f"{arm}_images_per_s"] for r in rounds)
    result["first_decode_s"] = rounds[0]["hfssl_decode_s"]
    print(
        f"  {case.name} over {args.rounds} rounds: "
        + ", ".join(f"{arm} {result[f'{arm}_images_per_s']:,.1f}" for arm in arms)
        + f" images/s (means); median hfssl/stock {result['speedup']:.2f}x"
        + f" (range {min(r['speedup'] for r in rounds):.2f}-{max(r['speedup'] for r in rounds):.2f})"
        + (f"; median cache/in-RAM {result['cache_vs_ram']:.3f}" if "cache_vs_ram" in result else "")
        + f"; decoding {count:,} images once into the cache took {result['first_decode_s']:.1f} s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps")
    parser.add_argument("--cases", default="28px,224px", help="comma-separated: 28px, 224px")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per case)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of the paths; ratios are medians")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument(
        "--stock_keep_freed_memory",
        action="store_true",
        help="give the stock path hfssl's malloc setting too: how much of the ratio is not the allocator",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hfssl-mim-bench-"))
    print(f"machine: {hardware_name()}; bf16 autocast in hfssl: {bf16_supported()}", flush=True)
    results = {name: run_case(CASES[name], args, work) for name in args.cases.split(",")}
    if args.json:
        summary = dict(machine=hardware_name(), stock_keep_freed_memory=args.stock_keep_freed_memory, cases=results)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    fields = [f"mae_speedup_{name}={r['speedup']:.2f}" for name, r in results.items()]
    fields += [f"cache_vs_ram_{name}={r['cache_vs_ram']:.3f}" for name, r in results.items() if "cache_vs_ram" in r]
    print(" ".join(fields))


if __name__ == "__main__":
    sys.exit(main())
