"""Vision-text alignment: losses, the two tower traps, locking, retrieval metrics, data sources, and the recipe end to end
(its saved model, loaded by the stock zero-shot pipeline in a process without hfssl, predicts what hfssl scored)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_recipe
from hfssl.args import ImageTextDataArguments
from hfssl.data.image_text import load_image_text
from hfssl.dual_encoder import image_tower, join_towers, text_tower
from hfssl.pretext.contrastive import chance_recall, clip_loss, lock_tower, recall_at_k, siglip_loss
from hfssl.tokenizer import train_tokenizer

TINY_BERT = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"a photo of a {w}." for w in "cat dog bird fish tree car".split()] * 20, 200)


def test_clip_loss_with_distinct_captions_is_the_symmetric_cross_entropy():
    logits = torch.randn(5, 5)
    target = torch.arange(5)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(clip_loss(logits), expected)
    assert torch.allclose(clip_loss(logits, torch.arange(5)), expected)


def test_clip_loss_counts_every_image_of_a_repeated_caption_as_positive():
    ids = torch.tensor([0, 1, 0])  # texts 0 and 2 are the same caption
    logits = torch.tensor([[0.0, -5.0, 5.0], [-5.0, 5.0, -5.0], [5.0, -5.0, 0.0]])  # symmetric: one formula, both ways
    # text 0 is closest to image 2, which has the same caption: a positive, not a mistake
    loss = clip_loss(logits, ids)
    per_row = -torch.log_softmax(logits, -1)
    expected = (per_row[0, [0, 2]].mean() + per_row[1, 1] + per_row[2, [0, 2]].mean()) / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss < clip_loss(logits)  # with one positive per row, the equal caption counts as a negative


def test_siglip_loss_follows_its_definition():
    text, image = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ids = torch.tensor([0, 1, 1, 2])
    loss = siglip_loss(text, image, scale, bias, ids)
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if ids[i] == ids[j] else -1.0
            total -= math.log(torch.sigmoid(z * (scale * text[i] @ image[j] + bias)).item())
    assert loss.item() == pytest.approx(total / 4, rel=1e-4)


def test_recall_at_k_and_its_chance_level():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    relevant = torch.tensor([[False, False, True], [True, False, False]])
    assert recall_at_k(sim, relevant, (1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}
    assert chance_recall(10, np.array([1, 1]), 5) == pytest.approx(0.5)
    assert chance_recall(10, np.array([2]), 1) == pytest.approx(0.2)
    assert chance_recall(10, np.array([2]), 5) == pytest.approx(1 - math.comb(8, 5) / math.comb(10, 5))


def test_a_text_tower_without_a_pooler_is_refused_with_the_fix(tmp_path, tokenizer):
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(vocab_size=len(tokenizer), pad_token_id=0, **TINY_BERT)
    ModernBertModel(config).save_pretrained(tmp_path / "modernbert")
    with pytest.raises(ValueError, match=r"returns no pooled output.*hfssl mlm --architecture bert"):
        text_tower(str(tmp_path / "modernbert"), None, tokenizer)


def test_a_bert_saved_without_its_pooler_gets_a_fresh_one_that_the_stock_class_keeps(tmp_path, tokenizer, caplog):
    from transformers import BertConfig, BertModel, VisionTextDualEncoderModel

    BertModel(BertConfig(vocab_size=len(tokenizer), **TINY_BERT), add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    with caplog.at_level(logging.INFO, logger="hfssl.dual_encoder"):
        text = text_tower(str(tmp_path / "bert"), None, tokenizer)
    assert "its pooler starts fresh" in caplog.text
    dual = join_towers(image_tower(None, "tiny", 8, 4), text, 16).eval()
    dual.save_pretrained(tmp_path / "dual")
    reloaded = VisionTextDualEncoderModel.from_pretrained(tmp_path / "dual").eval()
    inputs = tokenizer(["a photo of a cat.", "a dog."], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before, after = (m(**inputs, pixel_values=pixels).logits_per_image for m in (dual, reloaded))
    assert torch.equal(before, after)


def test_a_text_tower_left_on_its_unigram_plateau_is_named_with_the_fix(tmp_path, tokenizer, caplog):
    from transformers import BertConfig, BertModel

    path = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), **TINY_BERT)).save_pretrained(path)
    for left, warned in ((True, False), (False, True)):
        metrics = {"eval_mlm_loss": 6.97, "unigram_loss": 7.0, "left_unigram_plateau": left}
        (path / "hfssl.json").write_text(json.dumps({"metrics": metrics}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hfssl.dual_encoder"):
            text_tower(str(path), None, tokenizer)
        assert ("never left the unigram plateau" in caplog.text) is warned
    assert "6.97 against 7.00" in caplog.text and "mlm.py --time_budget" in caplog.text


def test_a_summary_at_chance_says_so():
    clip = load_recipe("clip")
    chance = {"eval_image_to_text_recall@10": 0.012, "eval_image_to_text_recall@10_chance": 0.008}
    learned = {**chance, "eval_image_to_text_recall@10": 0.064}
    assert clip.at_chance(chance) and not clip.at_chance(learned)
    assert "stayed at chance" in clip.alignment_summary(chance, "out", "a photo of a {label}.")
    assert "stayed at chance" not in clip.alignment_summary(learned, "out", "a photo of a {label}.")


def test_a_mae_checkpoint_is_used_whole_not_on_random_masks(tmp_path):
    from transformers import AutoModel, BeitModel, ViTMAEConfig, ViTMAEModel

    config = ViTMAEConfig(image_size=8, patch_size=4, num_channels=3, mask_ratio=0.75, **TINY_BERT)
    ViTMAEModel(config).save_pretrained(tmp_path / "mae")
    pixels = torch.randn(2, 3, 8, 8)
    stock = AutoModel.from_pretrained(tmp_path / "mae").eval()
    with torch.no_grad():  # the trap: the stock class masks patches at random at every call
        assert not torch.equal(stock(pixel_values=pixels).last_hidden_state, stock(pixel_values=pixels).last_hidden_state)
    tower = image_tower(str(tmp_path / "mae"), None).eval()
    assert isinstance(tower, BeitModel) and tower.config.use_mean_pooling
    with torch.no_grad():
        first, second = tower(pixel_values=pixels), tower(pixel_values=pixels)
    assert torch.equal(first.pooler_output, second.pooler_output)
    assert first.last_hidden_state.shape[1] == 1 + 4  # every patch, none masked
    # the encoder's own weights, as trained: the first patch projection is the checkpoint's
    assert torch.equal(tower.embeddings.patch_embeddings.projection.weight, stock.embeddings.patch_embeddings.projection.weight)


def test_locking_freezes_a_tower_but_its_top_layers():
    tower = image_tower(None, "tiny", 8, 4)
    layers = len(tower.layers)
    left = lock_tower(tower, 1)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith((f"layers.{layers - 1}.", "pooler.")) for n in trainable)
    assert any(n.startswith("pooler.") for n in trainable)
    assert left == sum(p.numel() for p in tower.parameters() if p.requires_grad)
    assert lock_tower(tower, 0) == 0


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_captions_come_from_metadata_or_from_class_folders(tmp_path):
    meta = tmp_path / "meta"
    rows = []
    for i in range(6):
        _png(meta / f"{i}.png", 40 * i)
        rows.append({"file_name": f"{i}.png", "text": f"gray level {i}"})
    (meta / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pairs = load_image_text(ImageTextDataArguments(train_dir=str(meta), validation_split_percentage=34), seed=0)
    assert pairs.template is None
    assert sorted(pairs.train_captions + pairs.validation_captions) == sorted(r["text"] for r in rows)

    classes = tmp_path / "classes"
    for name in ("cat", "dog"):
        for i in range(3):
            _png(classes / name / f"{i}.png", 10 * i)
    pairs = load_image_text(ImageTextDataArguments(train_dir=str(classes), caption_template="an image of a {label}"), seed=0)
    assert set(pairs.train_captions) == {"an image of a cat", "an image of a dog"}

    flat = tmp_path / "flat"
    for i in range(3):
        _png(flat / f"{i}.png", i)
    with pytest.raises(ValueError, match="neither captions nor class labels"):
        load_image_text(ImageTextDataArguments(train_dir=str(flat)), seed=0)
    with pytest.raises(ValueError, match="must contain '\\{label\\}'"):
        ImageTextDataArguments(caption_template="a photo")


_PIPELINE = """
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline
job = json.loads(open(sys.argv[1]).read())
classify = pipeline("zero-shot-image-classification", model=job["model"])
images = [Image.fromarray(np.array(image, dtype=np.uint8)) for image in job["images"]]
out = classify(images, candidate_labels=job["labels"], hypothesis_template=job["hypothesis"])
print(json.dumps([max(o, key=lambda r: r["score"])["label"] for o in out]))
assert "hfssl" not in sys.modules
"""


@pytest.mark.slow
def test_clip_aligns_the_digits_and_the_pipeline_predicts_what_hfssl_scored(tmp_path):
    out = tmp_path / "clip"
    options = ["--max_steps", "100", "--eval_steps", "50", "--logging_steps", "10", "--disable_tqdm", "true"]
    result = load_recipe("clip").main(options + ["--output_dir", str(out)])
    metrics = result.metrics
    chance = metrics["eval_zero_shot_chance"]
    assert chance == pytest.approx(0.1)
    assert metrics["eval_zero_shot_accuracy"] > 3 * chance > metrics["start_zero_shot_accuracy"]
    assert metrics["eval_image_to_text_recall@1"] > 3 * metrics["eval_image_to_text_recall@1_chance"]
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] - 0.5  # from about ln(128)
    record = json.loads((out / "hfssl.json").read_text())
    assert record["recipe"] == "clip" and record["zero_shot_template"] == "a photo of a {label}."
    card = (out / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in card and 'hypothesis_template="a photo of a {}."' in card

    # the held-out digits the recipe scored, through the stock pipeline in a process that never imports hfssl
    pairs = load_image_text(ImageTextDataArguments(), seed=42)
    source, names = pairs.images.validation, pairs.images.class_names
    images = [np.asarray(source.open(i).convert("RGB")).tolist() for i in source.indices]
    job = dict(model=str(out), images=images, labels=names, hypothesis="a photo of a {}.")
    (tmp_path / "job.json").write_text(json.dumps(job))
    command = [sys.executable, "-c", _PIPELINE, str(tmp_path / "job.json")]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    predicted = json.loads(proc.stdout.strip().splitlines()[-1])
    accuracy = float(np.mean([p == names[label] for p, label in zip(predicted, source.labels)]))
    assert accuracy == pytest.approx(metrics["eval_zero_shot_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_siglip_with_a_locked_mae_image_tower(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEModel

    config = ViTMAEConfig(image_size=16, patch_size=4, num_channels=3, **TINY_BERT)
    ViTMAEModel(config).save_pretrained(tmp_path / "mae")
    options = ["--loss", "siglip", "--image_model_name_or_path", str(tmp_path / "mae"), "--lock_image", "true"]
    options += ["--unlocked_image_layers", "1", "--max_steps", "6", "--eval_steps", "3", "--disable_tqdm", "true"]
    result = load_recipe("clip").main(options + ["--output_dir", str(tmp_path / "o")])
    assert math.isfinite(result.metrics["eval_loss"])
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert saved["vision_config"]["model_type"] == "beit" and saved["vision_config"]["use_mean_pooling"]
