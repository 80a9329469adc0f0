"""The classic baselines a few-label transfer run is measured against, on the same split, and the verdict.

TF-IDF (word 1-2 grams) + logistic regression for text, pixels + logistic regression for images: what a
practitioner would try first with a few labels and no pretraining. Their settings are those of
bench/ssl_gain.py's classic arms (C=10 for TF-IDF, C=0.1 for pixels scaled to [0, 1]). Written with
scikit-learn; nothing here trains a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FEW_LABELS", "fits_baseline", "image_baseline", "text_baseline", "verdict"]

# A labeled set counts as few-label (and gets the baseline) when no class has this many training examples.
FEW_LABELS = 300
PIXEL_SIDE = 32  # images are shrunk to at most this side before the pixel baseline (area averaging)


def fits_baseline(choice: str, train_labels: np.ndarray) -> bool:
    """--baseline auto: only for few-label data (every class under FEW_LABELS examples); on / off: as said."""
    if choice != "auto":
        return choice == "on"
    return int(np.bincount(np.asarray(train_labels)).max()) < FEW_LABELS


def _scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {"accuracy": float((predicted == truth).mean()), "f1_macro": float(f1_score(truth, predicted, average="macro"))}


def text_baseline(train_texts: Sequence[str], train_labels: np.ndarray, eval_texts: Sequence[str], eval_labels: np.ndarray):
    """TF-IDF of word 1-2 grams (sublinear tf) + logistic regression, fitted on the training split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(vectorizer.fit_transform(list(train_texts)), train_labels)
    scores = _scores(model.predict(vectorizer.transform(list(eval_texts))), np.asarray(eval_labels))
    return {"name": "TF-IDF (1-2 grams) + logistic regression", **scores}


def image_baseline(train_pixels: Any, train_labels: np.ndarray, eval_pixels: Any, eval_labels: np.ndarray):
    """Pixels (uint8, shrunk to at most 32 x 32 by area averaging, scaled to [0, 1]) + logistic regression."""
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression

    def features(pixels: torch.Tensor) -> np.ndarray:
        x = pixels.double() / 255.0  # float64, as scikit-learn computes
        if max(x.shape[-2:]) > PIXEL_SIDE:
            scale = PIXEL_SIDE / max(x.shape[-2:])
            size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
            x = F.interpolate(x, size=size, mode="area")
        return x.reshape(len(x), -1).numpy()

    model = LogisticRegression(C=0.1, max_iter=1000).fit(features(train_pixels), train_labels)
    scores = _scores(model.predict(features(eval_pixels)), np.asarray(eval_labels))
    return {"name": "pixels + logistic regression", **scores}


def verdict(results: dict[str, Any], name: str | None) -> str | None:
    """Whether the fine-tuned model beats the classic baseline (`name`) and, when it was trained, the from-scratch
    control, in a sentence each; None when neither was measured.

    With several seeds, the model's mean must beat the other by more than the seeds' standard deviation.
    """
    model = results.get("eval_accuracy_mean", results["eval_accuracy"])
    spread = results.get("eval_accuracy_std", 0.0)
    shown = f"{model:.3f}" + (f" +- {spread:.3f}" if "eval_accuracy_std" in results else "")
    sentences = []
    if "eval_baseline_accuracy" in results and name is not None:
        base = results["eval_baseline_accuracy"]
        if model - base > spread:
            sentences.append(
                f"The fine-tuned model beats the classic baseline, {name}, on this split: accuracy {shown} against {base:.3f}."
            )
        elif base - model > spread:
            sentences.append(
                f"The fine-tuned model does NOT beat the classic baseline, {name}: accuracy {shown} against {base:.3f}; "
                "with these labels and this starting model, the classic model is the better one here."
            )
        else:
            sentences.append(
                f"The fine-tuned model and the classic baseline, {name}, are level on this split: "
                f"accuracy {shown} against {base:.3f}."
            )
    if "eval_scratch_accuracy" in results:
        scratch = results["eval_scratch_accuracy"]
        margin = max(spread, results.get("eval_scratch_accuracy_std", 0.0))
        if model - scratch > margin:
            sentences.append(f"Pretraining paid off: the same architecture from random weights reaches {scratch:.3f}.")
        else:
            sentences.append(
                f"Pretraining did NOT pay off on this data: the same architecture from random weights reaches {scratch:.3f}."
            )
    return " ".join(sentences) or None
