"""How good are an encoder's features for labels it never trained on: kNN and linear-probe accuracy.

Features are the encoder's `pooler_output`: for the BEiT encoder that mim.py exports, the layer
norm of the mean of the patch tokens (MAE's fine-tuning head), not the CLS token: neither MAE's
nor SimMIM's loss reaches the CLS token (their decoders read patch tokens only), so after
self-supervised pretraining it carries little. They are exactly what
`pipeline("image-feature-extraction", model=output, pool=True)` returns for the exported model.
Both scores are fitted on training images and measured on held-out ones.

- kNN: cosine similarity, k nearest training images, each voting with weight exp(similarity / 0.07)
  (the weighted kNN of Wu et al. 2018, used by DINO), through scikit-learn's KNeighborsClassifier.
- linear probe: scikit-learn's logistic regression on standardised features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hfssl.data.images import normalize
from hfssl.sharding import unsharded

__all__ = ["ProbeCallback", "encoder_features", "knn_accuracy", "linear_probe_accuracy", "probe_scores"]

logger = logging.getLogger(__name__)

KNN_TEMPERATURE = 0.07


@torch.no_grad()
def encoder_features(
    encoder: torch.nn.Module,
    pixels: torch.Tensor | Any,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    bf16: bool = False,
) -> np.ndarray:
    """uint8 images (N, C, H, W) -> (N, hidden) float32: the encoder's pooled output (its pooler must exist).
    `pixels` is a tensor or anything whose slices are (a lazy hfssl.data.images.ImageRows)."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = normalize(pixels[start : start + batch_size].to(device), mean, std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pooled = encoder(pixel_values=batch).pooler_output  # (B, hidden)
        out.append(pooled.float().cpu())
    encoder.train(was_training)
    return torch.cat(out).numpy()


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20) -> float:
    """Accuracy of a cosine kNN whose k neighbours vote with weight exp(similarity / 0.07)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(
        n_neighbors=min(k, len(train_x)),
        metric="cosine",
        algorithm="brute",
        weights=lambda distance: np.exp((1.0 - distance) / KNN_TEMPERATURE),
    )
    return float(knn.fit(train_x, train_y).score(test_x, test_y))


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of a logistic regression on standardised features (the encoder stays frozen)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(probe.fit(train_x, train_y).score(test_x, test_y))


def probe_scores(
    encoder: torch.nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    k: int = 20,
    bf16: bool = False,
) -> dict[str, float]:
    """{'knn_accuracy', 'linear_probe_accuracy'} of `encoder`, from (uint8 images, labels) pairs."""
    train_x = encoder_features(encoder, train[0], mean, std, bf16=bf16)
    test_x = encoder_features(encoder, held_out[0], mean, std, bf16=bf16)
    train_y, test_y = train[1].numpy(), held_out[1].numpy()
    # One BLAS/OpenMP thread: next to torch's thread pool, sklearn's spin-waiting threads made the fits ~15x slower.
    with threadpool_limits(limits=1):
        return {
            "knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, k),
            "linear_probe_accuracy": linear_probe_accuracy(train_x, train_y, test_x, test_y),
        }


class ProbeCallback(TrainerCallback):
    """Adds eval_knn_accuracy and eval_linear_probe_accuracy to every evaluation's log entry.

    It runs when the evaluation metrics are logged (the Trainer logs before `on_evaluate`), so
    the accuracies join that same entry: the progress bar, trainer_state.json and `evaluate()`'s
    return value.
    `encoder_of(model)` gives the module whose features are probed.
    """

    def __init__(
        self,
        encoder_of: Callable[[Any], torch.nn.Module],
        train: tuple[torch.Tensor, torch.Tensor],
        held_out: tuple[torch.Tensor, torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        k: int = 20,
    ) -> None:
        self.encoder_of, self.train, self.held_out, self.mean, self.std, self.k = encoder_of, train, held_out, mean, std, k

    @classmethod
    def for_images(
        cls,
        encoder_of: Callable[[Any], torch.nn.Module],
        train: Any,
        held_out: Any,
        mean: Sequence[float],
        std: Sequence[float],
        k: int = 20,
        samples: int = 5000,
        seed: int = 0,
    ) -> ProbeCallback | None:
        """Probes on up to `samples` training images and as many held-out ones (a seeded sample of each); None unless
        both have two or more classes. Only their features are held in memory: the images are read batch by batch."""
        if train.labels is None or held_out.labels is None or len(train.labels.unique()) < 2 or len(held_out) < 2:
            return None
        return cls(encoder_of, train.labeled_sample(samples, seed), held_out.labeled_sample(samples, seed), mean, std, k)

    def score(self, model: Any, bf16: bool = False) -> dict[str, float]:
        """{'knn_accuracy', 'linear_probe_accuracy'} of `model`'s encoder now."""
        return probe_scores(self.encoder_of(model), self.train, self.held_out, self.mean, self.std, self.k, bf16=bf16)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        model: Any = None,
        **kw: Any,
    ) -> None:
        if logs is None or "eval_loss" not in logs or model is None:
            return
        model = unsharded(model)  # under FSDP every process takes part in gathering the weights to the main one
        if not state.is_world_process_zero:
            return
        scores = {f"eval_{name}": value for name, value in self.score(model, bf16=args.bf16).items()}
        logger.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        logs.update(scores)
        if state.log_history and state.log_history[-1].get("eval_loss") == logs["eval_loss"]:
            state.log_history[-1].update(scores)
