"""The classic baselines of a few-label transfer run, and the one-sentence verdict beside them."""

import json

import numpy as np
import pytest
import torch

from conftest import load_recipe
from hfssl.metrics.baselines import FEW_LABELS, fits_baseline, image_baseline, text_baseline, verdict


def test_the_baseline_is_fitted_for_few_labels_unless_told():
    few, many = np.repeat([0, 1], 20), np.repeat([0, 1], FEW_LABELS)
    assert fits_baseline("auto", few) and not fits_baseline("auto", many)
    assert fits_baseline("on", many) and not fits_baseline("off", few)


def test_text_and_pixel_baselines_learn_what_separates_the_classes():
    texts = [f"{w} report number {i}" for i in range(20) for w in ("weather", "football")]
    labels = np.array([0, 1] * 20)
    scores = text_baseline(texts[:30], labels[:30], texts[30:], labels[30:])
    assert scores["accuracy"] == 1.0 and scores["name"].startswith("TF-IDF")
    # bright vs dark 64 x 64 images: shrunk to 32 x 32, still separable
    g = torch.Generator().manual_seed(0)
    pixels = torch.cat(
        [torch.randint(0, 100, (20, 3, 64, 64), generator=g), torch.randint(150, 255, (20, 3, 64, 64), generator=g)]
    )
    labels = np.repeat([0, 1], 20)
    order = np.random.default_rng(0).permutation(40)
    pixels, labels = pixels[order].to(torch.uint8), labels[order]
    assert image_baseline(pixels[:30], labels[:30], pixels[30:], labels[30:])["accuracy"] == 1.0


@pytest.mark.parametrize(
    "results, says",
    [
        ({"eval_accuracy": 0.71, "eval_baseline_accuracy": 0.60}, "beats the classic baseline"),
        ({"eval_accuracy": 0.24, "eval_baseline_accuracy": 0.54}, "does NOT beat the classic baseline"),
        # over seeds, a lead smaller than the spread is a tie
        (
            {"eval_accuracy": 0.70, "eval_accuracy_mean": 0.62, "eval_accuracy_std": 0.05, "eval_baseline_accuracy": 0.60},
            "are level",
        ),
    ],
)
def test_the_verdict_compares_the_model_with_the_baseline(results, says):
    assert says in verdict(results, "TF-IDF")
    assert verdict({"eval_accuracy": 0.7}, None) is None


def test_the_verdict_says_whether_pretraining_paid_off_against_the_scratch_control():
    assert "Pretraining paid off" in verdict({"eval_accuracy": 0.55, "eval_scratch_accuracy": 0.30}, None)
    spread = {"eval_accuracy": 0.5, "eval_accuracy_mean": 0.50, "eval_accuracy_std": 0.04, "eval_scratch_accuracy": 0.48}
    assert "did NOT pay off" in verdict(spread, None)  # within the seeds' spread


@pytest.mark.slow
def test_a_few_label_run_reports_the_baseline_and_the_verdict(tmp_path):
    finetune = load_recipe("finetune_text")
    argv = ["--train_samples_per_class", "8", "--max_eval_samples", "80", "--max_steps", "4", "--max_seq_length", "32"]
    finetune.main(argv + ["--output_dir", str(tmp_path / "on")])
    results = json.loads((tmp_path / "on" / "eval_results.json").read_text())
    record = json.loads((tmp_path / "on" / "hfssl.json").read_text())
    assert 0 < results["eval_baseline_accuracy"] <= 1 and record["baseline"].startswith("TF-IDF")
    assert record["verdict"] in (tmp_path / "on" / "README.md").read_text()
    finetune.main(argv + ["--baseline", "off", "--controls", "scratch", "--output_dir", str(tmp_path / "off")])
    results = json.loads((tmp_path / "off" / "eval_results.json").read_text())
    assert "eval_baseline_accuracy" not in results and 0 <= results["eval_scratch_accuracy"] <= 1
    record = json.loads((tmp_path / "off" / "hfssl.json").read_text())
    assert "the same architecture from random weights reaches" in record["verdict"]
    assert "from-scratch control accuracy" in (tmp_path / "off" / "README.md").read_text()


def test_an_unknown_control_arm_is_refused():
    from hfssl.args import TransferArguments

    with pytest.raises(ValueError, match="--controls must list control arms among: scratch; got random"):
        TransferArguments(controls="scratch,random")
