from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BeitModel, TrainerControl, TrainerState, TrainingArguments, ViTConfig, ViTModel

from hfssl.data.images import DecodedImages
from hfssl.metrics.probes import ProbeCallback, encoder_features, knn_accuracy, linear_probe_accuracy
from hfssl.models import beit_config, vit_to_beit


def clusters(n: int, dim: int = 16, classes: int = 4, spread: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around `classes` random directions (a cosine kNN and a linear probe should separate them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return centres[labels] + spread * rng.normal(size=(n, dim)), labels


def test_knn_and_linear_probe_separate_clusters_and_not_noise():
    x, y = clusters(400)
    assert knn_accuracy(x[:300], y[:300], x[300:], y[300:]) > 0.97
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) > 0.97
    shuffled = np.random.default_rng(1).permutation(y)
    assert knn_accuracy(x[:300], shuffled[:300], x[300:], shuffled[300:]) < 0.45
    assert linear_probe_accuracy(x[:300], shuffled[:300], x[300:], shuffled[300:]) < 0.45


def test_knn_votes_are_weighted_by_similarity():
    """Two close neighbours of class 1 outvote three distant ones of class 0 (a plain majority would not)."""
    train = np.array([[1.0, 0.02], [1.0, -0.02], [0.5, 1.0], [0.5, -1.0], [0.3, 1.0]])
    labels = np.array([1, 1, 0, 0, 0])
    assert knn_accuracy(train, labels, np.array([[1.0, 0.0]]), np.array([1]), k=5) == 1.0


def test_features_are_the_layer_normed_mean_of_patch_tokens_without_cls():
    """The exported encoder's pooled output, which pipeline("image-feature-extraction", pool=True) returns too."""
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=8,
        patch_size=4,
        num_channels=1,
    )
    torch.manual_seed(0)
    vit = ViTModel(config, add_pooling_layer=False).eval()
    encoder = BeitModel(beit_config(config, mean_pooling=True)).eval()
    encoder.load_state_dict(vit_to_beit(vit.state_dict(), mean_pooling=True))
    pixels = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    features = encoder_features(encoder, pixels, [0.5], [0.5], batch_size=2)
    with torch.no_grad():
        hidden = vit(pixel_values=(pixels.float() / 255 - 0.5) / 0.5, output_hidden_states=True).hidden_states[-1]
        expected = vit.layernorm(hidden[:, 1:].mean(1)).numpy()
    assert features.shape == (5, 32)
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_callback_adds_accuracies_to_the_evaluation_log_only():
    x, y = clusters(120, dim=1 * 4 * 4, classes=3, spread=0.1)
    # the "encoder" returns the images as tokens, so probe accuracy is that of the clusters
    pixels = torch.tensor((x - x.min()) / (x.max() - x.min()) * 255, dtype=torch.uint8).view(-1, 1, 4, 4)

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values: torch.Tensor) -> object:
            return type("Out", (), {"pooler_output": pixel_values.flatten(1)})  # (B, 16)

    train = DecodedImages(pixels[:100], torch.tensor(y[:100]))
    held_out = DecodedImages(pixels[100:], torch.tensor(y[100:]))
    callback = ProbeCallback.for_images(lambda model: model, train, held_out, [0.5], [0.5], k=5, samples=80)
    assert len(callback.train[0]) == 80
    state, args = TrainerState(), TrainingArguments(output_dir="unused", report_to="none")
    state.log_history.append({"eval_loss": 0.5, "step": 0})
    logs = {"eval_loss": 0.5}
    callback.on_log(args, state, TrainerControl(), logs=logs, model=Identity())
    assert logs["eval_knn_accuracy"] > 0.9 and logs["eval_linear_probe_accuracy"] > 0.9
    assert state.log_history[-1]["eval_knn_accuracy"] == logs["eval_knn_accuracy"]
    training_log = {"loss": 0.4}
    callback.on_log(args, state, TrainerControl(), logs=training_log, model=Identity())
    assert training_log == {"loss": 0.4}


@pytest.mark.parametrize("labels", [None, "one_class"])
def test_no_probe_without_two_classes(labels):
    pixels = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    y = None if labels is None else torch.zeros(10, dtype=torch.long)
    data = DecodedImages(pixels, y)
    assert ProbeCallback.for_images(lambda m: m, data, data, [0.5], [0.5]) is None
