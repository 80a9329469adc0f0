"""End-to-end runs of recipes/mim.py on the embedded digits, small enough to take seconds."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

from conftest import load_recipe

ENCODER = "num_hidden_layers=2,hidden_size=64,num_attention_heads=2,intermediate_size=128"
DECODER = ",decoder_num_hidden_layers=1,decoder_hidden_size=64,decoder_num_attention_heads=2,decoder_intermediate_size=128"
TINY_MIM = [
    "--max_train_samples",
    "640",
    "--probe_samples",
    "640",
    "--per_device_train_batch_size",
    "64",
    "--learning_rate",
    "2e-3",
    "--logging_steps",
    "10",
    "--save_steps",
    "100",
    "--bf16",
    "false",
]


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("mim")


@pytest.fixture(scope="module", params=["mae", "simmim"])
def pretrained(request, recipe, tmp_path_factory):
    """One short pretraining per method: (method, output dir, metrics, printed summary)."""
    out = tmp_path_factory.mktemp(request.param) / "out"
    overrides = ENCODER + (DECODER if request.param == "mae" else "")
    argv = [
        "--method",
        request.param,
        "--output_dir",
        str(out),
        "--config_overrides",
        overrides,
        "--max_steps",
        "200",
        "--eval_steps",
        "100",
        *TINY_MIM,
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = recipe.main(argv).metrics
    return request.param, out, metrics, printed.getvalue()


@pytest.mark.slow
def test_loss_falls_and_the_summary_reports_it(pretrained):
    method, out, metrics, printed = pretrained
    record = json.loads((out / "hfssl.json").read_text())
    history = [e["loss"] for e in record_log(out)]
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:2]), history
    assert f"hfssl mim ({method})" in printed and "reconstruction loss" in printed and "kNN accuracy" in printed
    assert record["lineage"]["pretext"] == method and record["lineage"]["data"] == "sklearn-digits"
    assert record["num_channels"] == 1 and record["image_size"] == 16
    assert metrics["train_images"] == 200 * 64  # 640 images make 10 full batches per epoch
    assert metrics["train_images_per_second"] > 0


def record_log(out):
    """The training-loss entries of the last checkpoint's trainer_state.json."""
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [e for e in state["log_history"] if "loss" in e]


@pytest.mark.parametrize("pretrained", ["mae"], indirect=True)
@pytest.mark.slow
def test_knn_beats_the_random_init_encoder(pretrained):
    """MAE only: at this size SimMIM's features first get worse for kNN, and need the demo's 600 steps to recover."""
    _, _, metrics, _ = pretrained
    assert metrics["eval_knn_accuracy"] > metrics["start_knn_accuracy"] + 0.02, metrics
    assert 0 < metrics["eval_linear_probe_accuracy"] <= 1


@pytest.mark.slow
def test_output_loads_as_a_beit_classifier_and_automodel(pretrained):
    method, out, _, _ = pretrained
    classifier, info = AutoModelForImageClassification.from_pretrained(out, num_labels=10, output_loading_info=True)
    assert type(classifier).__name__ == "BeitForImageClassification" and classifier.config.use_mean_pooling
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"]
    encoder, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]  # its pooler (the layer norm of the patch mean) is trained, not random
    processor = AutoImageProcessor.from_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)  # grayscale digits, exported to read RGB as pipelines feed it
    with torch.no_grad():
        assert classifier(**inputs).logits.shape == (1, 10)
        assert encoder(**inputs).last_hidden_state.shape == (1, 17, 64) and encoder(**inputs).pooler_output.shape == (1, 64)
    for name in ("loss_curve.png", "reconstructions.png", "README.md", "all_results.json"):
        assert (out / name).stat().st_size > 0, name
    card = (out / "README.md").read_text()
    assert "kNN accuracy" in card and "reconstructions.png" in card and ("MAE" in card if method == "mae" else "SimMIM" in card)


def test_image_folder_run_counts_skipped_files(recipe, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    metrics = recipe.main(
        [
            "--train_dir",
            str(folder),
            "--skip_corrupt_images",
            "true",
            "--output_dir",
            str(out),
            "--config_overrides",
            ENCODER + DECODER,
            "--max_steps",
            "4",
            "--eval_steps",
            "4",
            "--per_device_train_batch_size",
            "8",
            "--save_steps",
            "100",
            "--bf16",
            "false",
        ]
    ).metrics
    record = json.loads((out / "hfssl.json").read_text())
    assert record["skipped_images"] == 1 and record["num_channels"] == 3
    assert "1 unreadable images skipped" in capsys.readouterr().out
    assert "eval_knn_accuracy" not in metrics  # no class folders, no probe


@pytest.mark.parametrize("method", ["mae", "simmim"])
@pytest.mark.slow
def test_trust_remote_code_reaches_every_load_of_the_starting_checkpoint(recipe, tmp_path, monkeypatch, method):
    from transformers import AutoConfig

    from hfssl.args import PatchMaskingArguments, VisionModelArguments
    from hfssl.models import build_masked_image_model, masked_image_config, pooled_encoder

    # The starting checkpoint: an encoder as mim.py exports it (BEiT), so each method loads its config and its weights.
    config = masked_image_config(VisionModelArguments(num_channels=1), PatchMaskingArguments(method="mae"))
    config.update(
        dict(
            num_hidden_layers=1,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=64,
        )
    )
    start = tmp_path / "start"
    pooled_encoder(build_masked_image_model(config)).save_pretrained(start)
    loads = []
    for auto in (AutoConfig, AutoModel):

        def spy(*args, _load=auto.from_pretrained, _name=auto.__name__, **kwargs):
            loads.append((_name, kwargs.get("trust_remote_code")))
            return _load(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    out = tmp_path / "out"
    recipe.main(
        [
            "--method",
            method,
            "--model_name_or_path",
            str(start),
            "--trust_remote_code",
            "true",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--eval_steps",
            "2",
            "--max_train_samples",
            "64",
            "--probe_samples",
            "64",
            "--per_device_train_batch_size",
            "32",
            "--save_steps",
            "100",
            "--bf16",
            "false",
        ]
    )
    assert ("AutoModel", True) in loads and ("AutoConfig", True) in loads
    assert all(trusted for _, trusted in loads), loads  # every load of the checkpoint, as the card says
    assert json.loads((out / "hfssl.json").read_text())["options"]["model"]["trust_remote_code"] is True
    assert "Trained with `trust_remote_code=True`" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image_size", "30", "--patch_size", "4"], "--image_size 30 is not divisible by --patch_size 4"),
        (["--mask_ratio", "1.0"], r"--mask_ratio must be in \[0, 1\)"),
        (["--mask_ratio", "-0.2"], r"--mask_ratio must be in \[0, 1\)"),
        (["--method", "beit"], "--method"),
        (["--mask_type", "block"], "only apply to --method simmim"),
        (["--method", "simmim", "--norm_pix_loss", "true"], "--norm_pix_loss"),
        (["--method", "simmim", "--mask_patch_size", "6"], "--mask_patch_size 6"),
        (["--model_name_or_path", "some/vit", "--image_size", "32"], "--image_size only apply to a from-scratch model"),
        (["--crop_min_scale", "0"], "--crop_min_scale"),
    ],
)
def test_bad_options_fail_before_anything_is_written(recipe, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        recipe.main(flags + ["--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("problem", ["empty_folder", "corrupt_file"])
def test_bad_images_fail_before_training_naming_the_fix(recipe, tmp_path, problem):
    folder = tmp_path / "images"
    (folder / "cats").mkdir(parents=True)
    if problem == "corrupt_file":
        for i in range(5):
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "cats" / f"{i}.png")
        (folder / "cats" / "bad.png").write_bytes(b"\x89PNG garbage")
    expected = "--train_dir .* holds no image files" if problem == "empty_folder" else r"bad\.png.*--skip_corrupt_images true"
    with pytest.raises(ValueError, match=expected):
        recipe.main(["--train_dir", str(folder), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def digits_parquet_dataset(folder, train: int = 300, validation: int = 60):
    """A local dataset directory (parquet shards with image and class-label features) of the embedded digits: what
    `datasets.load_dataset(folder, streaming=True)` streams like a Hub dataset."""
    import datasets

    from hfssl.data.samples import digits_images

    images, labels, names = digits_images()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    for split, rows in (("train", range(train)), ("validation", range(train, train + validation))):
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(images[i]) for i in rows], "label": [int(labels[i]) for i in rows]}, features=features
        )
        for shard in range(2):
            ds.shard(2, shard, contiguous=True).to_parquet(str(folder / "data" / f"{split}-{shard:05d}-of-00002.parquet"))
    return folder


@pytest.mark.slow
def test_streamed_hub_images_train_with_cached_held_out_images_and_probes(recipe, tmp_path):
    data = digits_parquet_dataset(tmp_path / "digits")
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    argv = ["--dataset_name", str(data), "--streaming", "true", "--image_cache_dir", str(cache)]
    argv += ["--config_overrides", ENCODER + DECODER, "--max_steps", "6", "--eval_steps", "3", "--output_dir", str(out)]
    argv += ["--per_device_train_batch_size", "32", "--probe_samples", "100", "--bf16", "false"]
    recipe.main(argv)
    record = json.loads((out / "hfssl.json").read_text())
    metrics = record["metrics"]
    assert metrics["train_steps"] == 6 and metrics["train_images"] == 6 * 32
    assert np.isfinite(metrics["eval_loss"]) and "eval_knn_accuracy" in metrics and "start_knn_accuracy" in metrics
    # cached: the 60 held-out images and the probes' 100 training images; the training stream is not
    sizes = sorted(json.loads(p.read_text())["images"] for p in cache.glob("*/meta.json"))
    assert sizes == [60, 100]
    AutoModel.from_pretrained(out)


def test_streaming_is_refused_for_a_local_folder_before_any_work(recipe, tmp_path):
    with pytest.raises(ValueError, match="--streaming.*--dataset_name"):
        recipe.main(["--train_dir", str(tmp_path), "--streaming", "true", "--output_dir", str(tmp_path / "out")])
