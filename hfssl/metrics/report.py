"""Classification scores through `evaluate`, from the metric modules shipped in hfssl/metrics (offline).

`evaluate.load("accuracy")` downloads its script from the Hub; loading the module by its path
inside the installed package needs no network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import EvalPrediction

__all__ = ["classification_metrics", "load_metric", "majority_accuracy", "save_confusion_matrix", "scalar_scores"]

METRICS_DIR = Path(__file__).parent


def load_metric(name: str = "classification") -> Any:
    """An `evaluate` module shipped with hfssl (hfssl/metrics/<name>/<name>.py), loaded by path."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def scalar_scores(scores: dict[str, Any]) -> dict[str, float]:
    """The single-number scores (what the Trainer logs); the per-class report and matrix are kept apart."""
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}


def classification_metrics(label_names: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer `compute_metrics`: logits -> accuracy and macro precision / recall / F1."""
    metric = load_metric()

    def compute(pred: EvalPrediction) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        scores = metric.compute(predictions=np.argmax(logits, -1), references=pred.label_ids, label_names=list(label_names))
        return scalar_scores(scores)

    return compute


def majority_accuracy(train_labels: np.ndarray, eval_labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent training class: the floor any classifier must beat."""
    majority = np.bincount(train_labels).argmax()
    return float(np.mean(eval_labels == majority))


def save_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: Path, title: str) -> None:
    """A PNG of the confusion matrix, rows normalised to the share of each true class, with counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(label_names)
    side = min(2.5 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:  # beyond that the numbers would not be readable
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(n), label_names, rotation=45, ha="right")
        ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
