"""Masked-patch pretext: patch masks, their wiring into MAE and SimMIM, and the Trainer that uses them.

The models are transformers' own: `ViTMAEForPreTraining` (the encoder sees only the visible
patches, a small decoder predicts the pixels of the rest; MSE on masked patches) and
`ViTForMaskedImageModeling` (SimMIM: masked patches become a learned token, a linear head
predicts their pixels; L1 on masked pixels). What is written here is what those classes
leave to the training script: drawing the masks in the collator (so evaluation can use the
same masks every time), the block-wise masks of BEiT/SimMIM, the reconstruction picture, and
saving the encoder alone as a stock ViT.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from hfssl.models import pooled_encoder, rgb_input, rgb_processor
from hfssl.precision import MasterWeightsMixin, with_master_weights
from hfssl.runs import LossOnlyEvaluation, TimedTrainer

__all__ = [
    "MaskedImageTrainer",
    "block_mask",
    "mae_noise",
    "mask_inputs",
    "masked_image_summary",
    "random_mask",
    "reconstruct",
    "save_reconstruction_grid",
]


def mae_noise(batch_size: int, generator: torch.Generator | None = None, *, num_patches: int) -> dict[str, torch.Tensor]:
    """MAE's masking input: noise (batch_size, num_patches); the model keeps the patches with the lowest noise."""
    return {"noise": torch.rand(batch_size, num_patches, generator=generator)}


def random_mask(
    batch_size: int, grid: int, mask_ratio: float, unit: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """run_mim.py's MaskGenerator, batched: (batch_size, grid * grid) bool, True = masked patch.

    The grid of patches is cut into (grid / unit)^2 squares of unit x unit patches, and exactly
    ceil(mask_ratio * squares) of them are masked in every image.
    """
    side = grid // unit
    count = math.ceil(side * side * mask_ratio)
    order = torch.rand(batch_size, side * side, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch_size, side * side, dtype=torch.bool).scatter_(1, order[:, :count], True)
    return mask.view(batch_size, side, side).repeat_interleave(unit, 1).repeat_interleave(unit, 2).flatten(1)


def _block_mask_one(side: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """BEiT's block-wise masking (Bao et al. 2021, Algorithm 1) on a side x side grid; returns (side, side) bool."""
    mask = np.zeros((side, side), dtype=bool)
    min_area = max(1, round(count * 16 / 75))  # BEiT: blocks of at least 16 of the 75 patches it masks
    for _ in range(10 * count):
        left = count - mask.sum()
        if left <= 0:
            break
        area = rng.uniform(min(min_area, left), left)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < h <= side and 0 < w <= side):
            continue
        top, lft = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
        new = ~mask[top : top + h, lft : lft + w]
        if 0 < new.sum() <= left:
            mask[top : top + h, lft : lft + w] = True
    left = count - mask.sum()
    if left > 0:  # hfssl: top up at random so that every image masks exactly `count` units, like random_mask
        free = np.flatnonzero(~mask)
        mask.flat[rng.choice(free, size=left, replace=False)] = True
    return mask


def block_mask(
    batch_size: int, grid: int, mask_ratio: float, unit: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Block-wise masks: (batch_size, grid * grid) bool, ceil(mask_ratio * units) units in rectangles of random shape."""
    side = grid // unit
    count = math.ceil(side * side * mask_ratio)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    masks = torch.from_numpy(np.stack([_block_mask_one(side, count, rng) for _ in range(batch_size)]))
    return masks.repeat_interleave(unit, 1).repeat_interleave(unit, 2).flatten(1)


def _simmim_mask(
    batch_size: int, generator: torch.Generator | None = None, *, draw: Callable, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """SimMIM's masking input: bool_masked_pos (batch_size, num_patches) from `draw` (a module-level function: picklable)."""
    return {"bool_masked_pos": draw(batch_size, generator=generator, **kwargs)}


def mask_inputs(config: Any, masking: Any) -> Callable[[int, torch.Generator | None], dict[str, torch.Tensor]]:
    """The collator's pretext inputs for `config`'s model: MAE `noise` or SimMIM `bool_masked_pos` (picklable)."""
    grid = config.image_size // config.patch_size
    if masking.method == "mae":
        return partial(mae_noise, num_patches=grid * grid)
    unit = (masking.mask_patch_size or config.patch_size) // config.patch_size
    draw = random_mask if masking.mask_type == "random" else block_mask
    return partial(_simmim_mask, draw=draw, grid=grid, mask_ratio=masking.mask_ratio, unit=unit)


@torch.no_grad()
def reconstruct(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel mask (B, 1, H, W) bool, reconstruction (B, C, H, W)) in the model's input space.

    The reconstruction keeps the visible pixels and takes the model's prediction where masked (the
    loss ignores predictions of visible patches, so they are not meaningful).
    """
    model.eval()
    batch = {k: v.to(model.device) for k, v in batch.items()}
    pixels = batch["pixel_values"]
    out = model(**batch)
    p = model.config.patch_size
    grid = model.config.image_size // p
    if model.config.model_type == "vit_mae":
        patches = model.patchify(pixels)  # (B, L, p * p * C)
        predicted = out.logits
        if model.config.norm_pix_loss:  # predictions are per-patch normalised: undo it with the true patch statistics
            mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
            predicted = predicted * (var + 1e-6).sqrt() + mean
        patch_mask = out.mask.bool()  # (B, L)
        recon = model.unpatchify(torch.where(patch_mask[..., None], predicted.float(), patches))
    else:
        patch_mask = batch["bool_masked_pos"]
        recon = out.reconstruction.float()
    pixel_mask = patch_mask.view(-1, 1, grid, grid).repeat_interleave(p, 2).repeat_interleave(p, 3)
    return pixel_mask, torch.where(pixel_mask, recon, pixels)


def save_reconstruction_grid(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], mean: Any, std: Any, path: Path, title: str = ""
) -> None:
    """A PNG with one column per image and rows original | masked | reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixel_mask, recon = (t.cpu() for t in reconstruct(model, batch))
    shape = (1, -1, 1, 1)
    to_unit = lambda x: (x.float() * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)  # noqa: E731
    original = to_unit(batch["pixel_values"])
    rows = {
        "original": original,
        "masked": torch.where(pixel_mask, torch.full_like(original, 0.5), original),
        "reconstruction": to_unit(recon),
    }
    n = len(original)
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.9), dpi=100, squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            image = images[c].permute(1, 2, 0).numpy()
            ax = axes[r][c]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def masked_image_summary(method: str, metrics: dict[str, float], skipped: int, output_dir: str) -> str:
    """The recipe's closing lines: throughput, held-out loss, and probe accuracies before and after pretraining."""
    loss = "MSE" if method == "mae" else "L1"
    parts = [
        f"hfssl mim ({method}): {metrics['train_images']:,} images at {metrics['train_images_per_second']:,.0f} images/s; "
        f"held-out reconstruction loss ({loss} on masked pixels) {metrics['eval_loss']:.4f}"
    ]
    for key, name in (("knn_accuracy", "kNN accuracy"), ("linear_probe_accuracy", "linear-probe accuracy")):
        if f"eval_{key}" in metrics:
            before = f" (before pretraining {metrics[f'start_{key}']:.3f})" if f"start_{key}" in metrics else ""
            parts.append(f", {name} {metrics[f'eval_{key}']:.3f}{before}")
    if skipped:
        parts.append(f"; {skipped} unreadable images skipped")
    return "".join(parts) + f"\nSaved to {output_dir}"


class MaskedImageTrainer(MasterWeightsMixin, LossOnlyEvaluation, TimedTrainer):
    """A Trainer for MAE / SimMIM: fixed masks and no augmentation in evaluation, images/s, encoder-only final save.

    The loss is the model's own (a per-batch mean, so the Trainer scales it for gradient accumulation); evaluation
    gathers the held-out reconstruction loss only, not the reconstructions.
    Checkpoints keep the decoder so training can resume; the final `save_model` writes the encoder
    as a stock `BeitModel` whose pooler is the layer norm of the patch mean (see hfssl.models.pooled_encoder),
    reading RGB (a grayscale encoder's first convolution is spread over three channels, which pipelines feed),
    plus the image processor.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_images = 0

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if model.training:
            self.train_images += len(inputs["pixel_values"])
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        return with_master_weights(self, super().create_optimizer(model), model)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        training_collator = self.data_collator
        if hasattr(training_collator, "for_evaluation"):  # ImageBatchCollator, or the DecodingCollator around one
            self.data_collator = training_collator.for_evaluation(self.args.seed)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self._checkpointing:
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        if state_dict is not None and not state_dict:  # ZeRO-3 without gathered weights: DeepSpeed writes its own checkpoint next
            return
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(
            self.model
        )  # its config; the weights are `state_dict`'s when the Trainer gathered one
        rgb_input(pooled_encoder(model, state_dict)).save_pretrained(output_dir)
        if self.processing_class is not None:
            rgb_processor(self.processing_class).save_pretrained(output_dir)
