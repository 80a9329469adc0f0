"""End-to-end runs of recipes/finetune_text.py and finetune_image.py: transfer chains, every strategy, LoRA reloads, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from conftest import TINY_MLM, load_recipe
from hfssl.data.samples import DOCSTRING_FAMILIES, digits_images
from hfssl.transfer.models import load_classifier

mlm, mim = load_recipe("mlm"), load_recipe("mim")
finetune_text, finetune_image = load_recipe("finetune_text"), load_recipe("finetune_image")

# A few steps on a small stratified slice: seconds per run.
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
    "--disable_tqdm",
    "true",
]
FAST_IMAGE = [
    "--train_samples_per_class",
    "12",
    "--max_eval_samples",
    "60",
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "32",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]
SENTENCES = ["Return the running event loop of the current thread.", "Parse a message from a file object and return its headers."]


@pytest.fixture(scope="module")
def mlm_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm") / "out"
    two_layers = [a.replace("num_hidden_layers=1", "num_hidden_layers=2") for a in TINY_MLM]
    mlm.main(
        two_layers
        + ["--output_dir", str(out), "--max_steps", "10", "--eval_steps", "10", "--save_steps", "10", "--disable_tqdm", "true"]
    )
    return str(out)


@pytest.fixture(scope="module")
def mim_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("mim") / "out"
    mim.main(
        [
            "--output_dir",
            str(out),
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
            "--disable_tqdm",
            "true",
        ]
    )
    return str(out)


def digit_images(n: int) -> list[Image.Image]:
    images, _, _ = digits_images()
    return [Image.fromarray(img) for img in images[:n]]


def text_logits(model: torch.nn.Module, tokenizer, texts=SENTENCES) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**tokenizer(texts, return_tensors="pt", padding=True)).logits


@pytest.mark.slow
def test_text_chain_mlm_to_classifier(mlm_out, tmp_path, capsys):
    model, fresh = load_classifier("text", mlm_out, list(DOCSTRING_FAMILIES), pooling="mean")
    assert fresh == {"classifier.weight", "classifier.bias"}  # no backbone weight (ModernBERT's head comes from the MLM head)

    out = tmp_path / "ft"
    result = finetune_text.main(["--model_name_or_path", mlm_out, "--output_dir", str(out)] + FAST_TEXT).fit
    printed = capsys.readouterr().out
    assert re.search(r"accuracy 0\.\d+, macro-F1 0\.\d+ .*majority-class baseline 0\.\d+", printed)
    assert f"trainable parameters: {result.parameters['full']:,} of {result.parameters['full']:,}" in printed

    loaded = AutoModelForSequenceClassification.from_pretrained(out)  # a plain load: mean pooling is in the config
    assert list(loaded.config.id2label.values()) == list(DOCSTRING_FAMILIES) and loaded.config.classifier_pooling == "mean"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.allclose(text_logits(loaded, tokenizer), text_logits(result.model, tokenizer), atol=1e-5)
    label = DOCSTRING_FAMILIES[int(text_logits(result.model, tokenizer)[0].argmax())]
    assert pipeline("text-classification", model=str(out))(SENTENCES[0])[0]["label"] == label

    record = json.loads((out / "hfssl.json").read_text())
    assert record["lineage"]["base_model"] == mlm_out and record["lineage"]["strategy"] == "full"
    parent = json.loads(open(f"{mlm_out}/hfssl.json").read())["lineage"]
    assert record["lineage"]["parent"] == parent and parent["pretext"] == "masked-lm"
    scores = json.loads((out / "eval_results.json").read_text())
    assert all(k.startswith("eval_") for k in scores)
    assert {"eval_accuracy", "eval_f1_macro", "eval_precision_macro", "eval_recall_macro", "eval_loss"} <= set(scores)
    assert set(scores["eval_per_class"]) == set(DOCSTRING_FAMILIES)
    assert sum(map(sum, scores["eval_confusion_matrix"])) == 48
    for name in ("confusion_matrix.png", "loss_curve.png", "README.md", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert "| asyncio |" in (out / "README.md").read_text()


@pytest.mark.slow
def test_image_chain_mim_to_classifier(mim_out, tmp_path):
    model, fresh = load_classifier("image", mim_out, [str(d) for d in range(10)])
    assert fresh == {"classifier.weight", "classifier.bias"}  # the whole encoder came from mim.py

    out = tmp_path / "ft"
    result = finetune_image.main(["--model_name_or_path", mim_out, "--output_dir", str(out)] + FAST_IMAGE).fit
    loaded = AutoModelForImageClassification.from_pretrained(out)  # a plain load: BEiT pooling by the patch mean (the default)
    assert type(loaded).__name__ == "BeitForImageClassification" and loaded.config.use_mean_pooling
    pixels = torch.randn(3, 3, loaded.config.image_size, loaded.config.image_size)
    with torch.no_grad():
        assert torch.allclose(
            loaded.eval()(pixel_values=pixels).logits, result.model.eval()(pixel_values=pixels).logits, atol=1e-5
        )
    record = json.loads((out / "hfssl.json").read_text())
    assert record["lineage"]["parent"]["pretext"] == "mae" and record["lineage"]["base_model"] == mim_out
    # the grayscale encoder now reads RGB, which is what pipeline() gives it
    predictions = pipeline("image-classification", model=loaded, image_processor=str(out))(digit_images(2))
    assert all(p[0]["label"] in loaded.config.label2id for p in predictions)


@pytest.mark.slow
def test_lora_text_output_reloads_to_the_same_predictions(mlm_out, tmp_path, capsys):
    from peft import AutoPeftModelForSequenceClassification

    out = tmp_path / "lora"
    result = finetune_text.main(
        [
            "--model_name_or_path",
            mlm_out,
            "--output_dir",
            str(out),
            "--strategy",
            "lora",
            "--merge_lora",
            "true",
            "--learning_rate",
            "5e-3",
        ]
        + FAST_TEXT
    ).fit
    printed = capsys.readouterr().out
    trainable, full = result.parameters["trainable"], result.parameters["full"]
    assert trainable < full / 10 and f"trainable parameters: {trainable:,} of {full:,}" in printed
    assert f"full fine-tuning trains {full:,}" in printed

    tokenizer = AutoTokenizer.from_pretrained(out)
    before = text_logits(result.model, tokenizer)
    for reloaded in (
        AutoPeftModelForSequenceClassification.from_pretrained(out),
        AutoModelForSequenceClassification.from_pretrained(out / "merged"),
        AutoModelForSequenceClassification.from_pretrained(out),
    ):  # transformers' own PEFT loading
        after = text_logits(reloaded, tokenizer)
        assert torch.allclose(after, before, atol=1e-5) and torch.equal(after.argmax(-1), before.argmax(-1))
    assert (out / "model.safetensors").is_file() and (out / "adapter_model.safetensors").is_file()  # the base ships beside it
    assert not (out / "base_model").exists()
    label = pipeline("text-classification", model=str(out))(SENTENCES[0])[0]["label"]
    assert label == DOCSTRING_FAMILIES[int(before[0].argmax())]
    assert json.loads((out / "hfssl.json").read_text())["lora_base_model"] == "."
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out.resolve())


@pytest.mark.slow
def test_lora_image_output_reloads_on_its_base_model(mim_out, tmp_path):
    from peft import AutoPeftModel, PeftModel

    out = tmp_path / "lora"
    result = finetune_image.main(
        ["--model_name_or_path", mim_out, "--output_dir", str(out), "--strategy", "lora", "--merge_lora", "true"] + FAST_IMAGE
    ).fit
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = result.model.eval()(pixel_values=pixels).logits
        adapter = AutoModelForImageClassification.from_pretrained(out).eval()  # the base beside the adapter, then the adapter
        assert isinstance(AutoPeftModel.from_pretrained(out), PeftModel)
        merged = AutoModelForImageClassification.from_pretrained(out / "merged").eval()
        for after in (adapter(pixel_values=pixels).logits, merged(pixel_values=pixels).logits):
            assert torch.allclose(after, before, atol=1e-5) and torch.equal(after.argmax(-1), before.argmax(-1))
    assert len(pipeline("image-classification", model=str(out))(digit_images(1))[0]) == 5


@pytest.mark.parametrize(
    "flags, unchanged, changed",
    [
        (["--strategy", "linear_probe", "--seeds", "1,2"], ("model.embeddings.", "model.layers.", "model.final_norm."), ()),
        (
            ["--strategy", "freeze", "--freeze_layers", "1", "--pooling", "cls"],
            ("model.embeddings.", "model.layers.0."),
            ("model.layers.1.",),
        ),
        (
            [
                "--strategy",
                "lp_ft",
                "--layer_decay",
                "0.8",
                "--l2sp_alpha",
                "0.01",
                "--class_weights",
                "balanced",
                "--label_smoothing_factor",
                "0.1",
            ],
            (),
            ("model.embeddings.", "model.layers.0.", "model.layers.1."),
        ),
    ],
)
@pytest.mark.slow
def test_strategies_end_to_end_keep_frozen_weights(mlm_out, tmp_path, flags, unchanged, changed):
    out = tmp_path / "ft"
    result = finetune_text.main(
        ["--model_name_or_path", mlm_out, "--output_dir", str(out), "--learning_rate", "5e-3"] + FAST_TEXT + flags
    ).fit
    start, saved = load_file(f"{mlm_out}/model.safetensors"), load_file(out / "model.safetensors")
    assert not unchanged or [n for n in saved if n.startswith(unchanged)]
    for name, tensor in saved.items():
        if name.startswith(unchanged):
            assert torch.equal(tensor, start[name]), name
    for prefix in changed:
        assert any(not torch.equal(t, start[n]) for n, t in saved.items() if n.startswith(prefix)), prefix
    if "--seeds" in flags:  # the linear probe: only the head trains (ModernBERT's own: dense, norm, classifier), on the mean
        head = [*result.model.head.parameters(), *result.model.classifier.parameters()]
        assert result.parameters["trainable"] == sum(p.numel() for p in head)
        seeds = json.loads((out / "seed_results.json").read_text())
        accuracies = [r["eval_accuracy"] for r in seeds["per_seed"]]
        assert seeds["seeds"] == [1, 2] and seeds["eval_accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert seeds["eval_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert json.loads((out / "eval_results.json").read_text())["eval_accuracy_mean"] == seeds["eval_accuracy_mean"]
    if "lp_ft" in flags:
        assert (
            result.parameters["trainable_in_linear_probe"] < result.parameters["trainable_in_full"] == result.parameters["full"]
        )


def _csv(path, rows) -> str:
    pd.DataFrame(rows, columns=["text", "topic"]).to_csv(path, index=False)
    return str(path)


ROWS = [(f"{w} sentence number {i}", w) for w in ("alpha", "beta") for i in range(12)]


@pytest.mark.parametrize(
    "recipe, flags, message",
    [
        ("text", ["--train_file", "{csv}"], r"--label_column 'label' is not in the data; its columns are: text, topic"),
        ("text", ["--train_file", "{one_class}", "--label_column", "topic"], r"single class \('alpha'\)"),
        (
            "text",
            ["--train_file", "{csv}", "--validation_file", "{unseen}", "--label_column", "topic"],
            r"never seen in training: 'gamma'",
        ),
        (
            "text",
            ["--strategy", "lora", "--lora_target_modules", "qkv"],
            r"named qkv\. Candidate --lora_target_modules names: .*Wqkv",
        ),
        ("text", ["--strategy", "freeze", "--freeze_layers", "3"], r"--freeze_layers 3 is larger than the depth .*\(2 layers"),
        ("image", ["--strategy", "freeze", "--freeze_layers", "9"], r"--freeze_layers 9 is larger than the depth .*\(4 layers"),
    ],
)
@pytest.mark.slow
def test_bad_input_fails_before_training_and_writes_nothing(mlm_out, tmp_path, recipe, flags, message):
    files = {
        "csv": _csv(tmp_path / "d.csv", ROWS),
        "one_class": _csv(tmp_path / "one.csv", ROWS[:12]),
        "unseen": _csv(tmp_path / "u.csv", ROWS[:2] + [("gamma sentence", "gamma")]),
    }
    out = tmp_path / "out"
    argv = [f.format(**files) for f in flags] + ["--output_dir", str(out)]
    with pytest.raises(ValueError, match=message):
        if recipe == "text":
            finetune_text.main(argv + ["--model_name_or_path", mlm_out])
        else:
            finetune_image.main(argv + ["--max_train_samples", "100"])
    assert not out.exists()


@pytest.mark.slow
def test_embedded_text_task_full_fine_tuning_beats_the_majority_class(minilm_path, tmp_path, capsys):
    result = finetune_text.main(
        [
            "--output_dir",
            str(tmp_path / "o"),
            "--train_samples_per_class",
            "16",
            "--max_eval_samples",
            "96",
            "--max_seq_length",
            "32",
            "--max_steps",
            "16",
            "--per_device_train_batch_size",
            "16",
            "--learning_rate",
            "2e-4",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ]
    ).fit
    scores = result.eval_results
    assert result.model.config.name_or_path == minilm_path  # the packaged MiniLM is the default start
    assert scores["eval_accuracy"] > scores["eval_majority_accuracy"] + 0.3, scores  # measured 0.73 vs 0.11
    assert scores["eval_f1_macro"] > 0.4, scores
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and f"trainable parameters: {result.parameters['full']:,}" in printed


@pytest.mark.slow
def test_embedded_digits_full_fine_tuning_beats_the_majority_class(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor

    small = tmp_path / "vit"  # the default data; a ViT smaller than the default preset, trained from scratch
    ViTConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128, image_size=16, patch_size=4
    ).save_pretrained(small)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(small)
    result = finetune_image.main(
        [
            "--model_name_or_path",
            str(small),
            "--from_scratch",
            "true",
            "--output_dir",
            str(tmp_path / "o"),
            "--max_steps",
            "120",
            "--per_device_train_batch_size",
            "32",
            "--learning_rate",
            "3e-3",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ]
    ).fit
    scores = result.eval_results
    assert scores["eval_majority_accuracy"] < 0.15
    assert scores["eval_accuracy"] > scores["eval_majority_accuracy"] + 0.25, scores  # measured 0.52 vs 0.10
    assert scores["eval_f1_macro"] > 0.3, scores
    assert json.loads((tmp_path / "o" / "hfssl.json").read_text())["lineage"]["architecture_of"] == str(small)
