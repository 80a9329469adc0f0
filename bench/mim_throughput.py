"""Masked-autoencoder (MAE) pretraining throughput: the stock transformers recipe vs hfssl's default path.

Both train the same `ViTMAEForPreTraining` (hfssl's tiny preset: 4 encoder layers x 192, a 2-layer
decoder, 28x28 grayscale images in 4x4 patches, 75% masking) on the same real images
(Fashion-MNIST training images, written once as PNG files) for the same number of steps:

  (a) stock: what transformers' examples/pytorch/image-pretraining/run_mae.py does: a `datasets`
      image folder with per-sample transforms (decode, RandomResizedCrop(scale 0.2-1, bicubic),
      RandomHorizontalFlip, to tensor, normalise; written with PIL + numpy here because hfssl
      avoids torchvision), `Trainer`, default precision (fp32), no data-loader workers;
  (b) hfssl: recipes/mim.py itself with its defaults (images decoded once into a uint8 tensor
      dataset, crops and masks drawn per batch on tensors, bf16 autocast where supported, matmul
      attention on CPU in encoder and decoder), given the stock path's augmentation (crops down
      to 20% of the area, flips) so that both do the same work per image.

Every run is a fresh process (hfssl's recipe tunes malloc process-wide; the stock path keeps the C
library's defaults, as run_mae.py would). Both are timed by the same step callback; the rate
excludes the first three steps (start-up). The two paths run in alternating rounds (stock, hfssl,
stock, hfssl, ...) and the speedup is the median
of the per-round ratios: on a shared virtual machine the rate of one path drifts by 20% or more
between minutes, and a ratio of two runs taken back to back is steadier than either rate. It prints
images/s of each path in each round and the ratios. The last line is `mae_speedup=X`.

    python bench/mim_throughput.py [--quick] [--steps N] [--rounds R] [--batch_size B] [--stock_keep_freed_memory]
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
SIZE, PATCH = 28, 4
MEAN, STD = 0.5, 0.5  # ViTImageProcessor's defaults, used by both paths


def write_images(folder: Path, count: int) -> None:
    """The first `count` Fashion-MNIST training images as PNG files (what a user's image folder holds)."""
    if not FASHION.exists():
        sys.exit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, SIZE, SIZE)
    folder.mkdir(parents=True)
    for i, image in enumerate(pixels[:count]):
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")


def stock_transform(image: Image.Image) -> torch.Tensor:
    """run_mae.py's per-sample pipeline with PIL: RandomResizedCrop(0.2-1, bicubic), flip, to tensor, normalise."""
    image = image.convert("L")
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
    image = image.resize((SIZE, SIZE), Image.BICUBIC, box=(left, top, left + w, top + h))
    if random.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((array - MEAN) / STD)[None]


def train_stock(folder: Path, steps: int, batch: int, out: str, keep_freed_memory: bool = False) -> float:
    from datasets import load_dataset

    if keep_freed_memory:  # the --stock_keep_freed_memory check: hfssl's malloc setting on the stock path
        from hfssl.runtime import keep_freed_memory as keep

        keep()
    dataset = load_dataset("imagefolder", data_dir=str(folder), split="train")
    dataset = dataset.with_transform(lambda rows: {"pixel_values": [stock_transform(im) for im in rows["image"]]})
    preset = VISION_PRESETS["tiny"] | dict(image_size=SIZE, patch_size=PATCH, num_channels=1)
    set_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**preset, mask_ratio=0.75))
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
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
    return timer.rate(batch)


def train_hfssl(folder: Path, steps: int, batch: int, out: str) -> float:
    recipe = load_recipe("mim")
    timer = StepTimer()
    original = recipe.MaskedImageTrainer

    class WithStepTimer(original):  # the recipe's own trainer, plus the shared step timer
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), timer]
            super().__init__(*args, **kwargs)

    recipe.MaskedImageTrainer = WithStepTimer
    try:
        _run_mim(recipe, folder, steps, batch, out)
    finally:
        recipe.MaskedImageTrainer = original
    return timer.rate(batch)


def _run_mim(recipe, folder: Path, steps: int, batch: int, out: str) -> None:  # noqa: ANN001
    recipe.main(
        [
            "--train_dir",
            str(folder),
            "--image_size",
            str(SIZE),
            "--patch_size",
            str(PATCH),
            "--per_device_train_batch_size",
            str(batch),
            "--max_steps",
            str(steps),
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--logging_steps",
            "10000",
            "--disable_tqdm",
            "true",
            "--seed",
            "0",
            "--crop_min_scale",
            "0.2",
            "--horizontal_flip",
            "true",  # the stock path's augmentation, not hfssl's defaults
            "--output_dir",
            out,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps: about 2 minutes on 2 cores")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating stock/hfssl runs; the speedup is the median ratio")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument(
        "--stock_keep_freed_memory",
        action="store_true",
        help="give the stock path hfssl's malloc setting too: how much of the ratio is not the allocator",
    )
    args = parser.parse_args()
    steps = args.steps or (30 if args.quick else 100)
    count = args.images or (4_000 if args.quick else 20_000)
    work = Path(tempfile.mkdtemp(prefix="hfssl-mim-bench-"))
    write_images(work / "images", count)
    print(
        f"machine: {hardware_name()}; bf16 autocast in hfssl: {bf16_supported()}; {count:,} Fashion-MNIST images; "
        f"{steps} steps x {args.batch_size} images"
        + ("; the stock path also keeps freed memory" if args.stock_keep_freed_memory else "")
    )
    rounds = []
    for r in range(args.rounds):
        # Each run in a fresh process: hfssl's recipe tunes malloc process-wide, the stock path must not inherit it.
        stock = in_fresh_process(
            train_stock, work / "images", steps, args.batch_size, str(work / f"stock{r}"), args.stock_keep_freed_memory
        )
        hfssl = in_fresh_process(train_hfssl, work / "images", steps, args.batch_size, str(work / f"hfssl{r}"))
        rounds.append(dict(stock_images_per_s=stock, hfssl_images_per_s=hfssl, speedup=hfssl / stock))
        print(f"round {r + 1}: stock {stock:,.0f} images/s, hfssl {hfssl:,.0f} images/s, ratio {hfssl / stock:.2f}x", flush=True)
    speedup = statistics.median(r["speedup"] for r in rounds)
    stock, hfssl = (statistics.mean(r[f"{k}_images_per_s"] for r in rounds) for k in ("stock", "hfssl"))
    print(
        f"MAE tiny ViT over {args.rounds} rounds: stock {stock:,.0f} images/s, hfssl {hfssl:,.0f} images/s (means); "
        f"median ratio {speedup:.2f}x (range {min(r['speedup'] for r in rounds):.2f}-{max(r['speedup'] for r in rounds):.2f})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": hardware_name(),
                    "steps": steps,
                    "batch_size": args.batch_size,
                    "images": count,
                    "stock_keep_freed_memory": args.stock_keep_freed_memory,
                    "stock_images_per_s": stock,
                    "hfssl_images_per_s": hfssl,
                    "speedup": speedup,
                    "rounds": rounds,
                },
                indent=2,
            )
        )
    print(f"mae_speedup={speedup:.2f}")


if __name__ == "__main__":
    sys.exit(main())
