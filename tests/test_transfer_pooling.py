"""Mean pooling on stock classifiers: the head reads the masked mean (text) or the patch mean (ViT), padding is ignored,
the choice survives a reload, and image models that pool by themselves take no --pooling."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AlbertConfig, AutoModelForImageClassification, AutoModelForSequenceClassification, BertConfig, DistilBertConfig, ElectraConfig,
    ModernBertConfig, ResNetConfig, RobertaConfig, ViTConfig,
)

from hfssl.args import ImageClassifierArguments, TextClassifierArguments
from hfssl.transfer.models import image_pooling
from hfssl.transfer.pooling import apply_pooling, restore_pooling

SMALL = dict(vocab_size=100, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1, num_labels=3)
LENGTHS = [7, 4]  # the second text is padded with 3 tokens


def _head_on(plain, mean):
    """What each architecture's stock head computes from a pooled vector (batch, hidden), written out by hand."""
    kind = plain.config.model_type
    if kind == "bert":
        return plain.classifier(mean)  # the pooler's dense + tanh is bypassed
    if kind in ("roberta", "electra"):
        return plain.classifier(mean.unsqueeze(1))  # their heads read position 0
    if kind == "distilbert":
        return plain.classifier(torch.relu(plain.pre_classifier(mean)))
    return plain.classifier(plain.drop(plain.head(mean)))  # modernbert


CASES = {
    "bert": BertConfig(**SMALL),
    "roberta": RobertaConfig(**SMALL, pad_token_id=1),
    "electra": ElectraConfig(**SMALL, embedding_size=32),
    "distilbert": DistilBertConfig(vocab_size=100, dim=32, n_heads=2, hidden_dim=64, n_layers=1, num_labels=3),
    "modernbert": ModernBertConfig(**SMALL, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3),
}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 100, (len(LENGTHS), max(LENGTHS)), generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[1] * n + [0] * (max(LENGTHS) - n) for n in LENGTHS])
    return ids, mask


@pytest.mark.parametrize("name", CASES)
def test_mean_pooling_is_the_head_on_the_masked_mean(name):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CASES[name]).eval()
    plain = copy.deepcopy(model)
    assert apply_pooling(model, "mean") is model and model.config.hfssl_pooling == "mean"
    ids, mask = _batch()
    with torch.no_grad():
        hidden = plain.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = torch.stack([hidden[i, :n].mean(dim=0) for i, n in enumerate(LENGTHS)])  # padding left out
        expected = _head_on(plain, mean)
        logits = model(input_ids=ids, attention_mask=mask).logits
        other_padding = torch.where(mask.bool(), ids, torch.randint(5, 100, ids.shape))
        repadded = model(input_ids=other_padding, attention_mask=mask).logits
        cls = plain(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(repadded, logits, atol=1e-5)  # what the padding holds does not matter
    assert not torch.allclose(logits, cls, atol=1e-3)  # and it is not [CLS] pooling


def test_pooling_is_saved_and_restored(tmp_path):
    torch.manual_seed(0)
    model = apply_pooling(AutoModelForSequenceClassification.from_config(CASES["bert"]), "mean").eval()
    model.save_pretrained(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        assert plain.config.hfssl_pooling == "mean"
        assert not torch.allclose(plain(input_ids=ids, attention_mask=mask).logits, before, atol=1e-3)  # plain loading pools [CLS]
        assert torch.equal(restore_pooling(plain)(input_ids=ids, attention_mask=mask).logits, before)


def test_cls_pooling_leaves_the_stock_model_as_it_is():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CASES["bert"]).eval()
    plain = copy.deepcopy(model)
    apply_pooling(model, "cls")
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits)
    assert model.config.hfssl_pooling == "cls"


def test_unknown_heads_and_values_are_rejected_with_the_fix():
    albert = AutoModelForSequenceClassification.from_config(AlbertConfig(**SMALL, embedding_size=16))
    with pytest.raises(ValueError, match=r"--pooling mean is not available for AlbertForSequenceClassification.*Pass --pooling cls"):
        apply_pooling(albert, "mean")
    apply_pooling(albert, "cls")  # [CLS] pooling is what every stock head does
    with pytest.raises(ValueError, match=r"--pooling must be one of cls, mean, got 'max'"):
        TextClassifierArguments(pooling="max")


VIT = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, num_labels=3)


def test_vit_mean_pooling_reads_the_patch_mean_and_survives_a_reload(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(VIT).eval()
    plain = copy.deepcopy(model)
    apply_pooling(model, "mean")
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = plain.vit(pixel_values=pixels).last_hidden_state  # (2, 1 + 4 patches, 16), [CLS] first
        expected = plain.classifier(hidden[:, 1:].mean(dim=1))  # [CLS] left out of the mean
        logits = model(pixel_values=pixels).logits
        assert torch.allclose(logits, expected, atol=1e-5)
        assert not torch.allclose(logits, plain(pixel_values=pixels).logits, atol=1e-3)
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
        assert reloaded.config.hfssl_pooling == "mean"
        assert torch.equal(restore_pooling(reloaded)(pixel_values=pixels).logits, logits)


def test_image_pooling_defaults_to_mean_for_pretrained_vit_and_is_refused_for_models_that_pool_themselves():
    assert image_pooling(VIT, None) == "mean" and image_pooling(VIT, "cls") == "cls"
    assert image_pooling(VIT, None, from_scratch=True) == "cls"  # [CLS] trains with the task there
    resnet = ResNetConfig(num_labels=3)
    assert image_pooling(resnet, None) is None  # a CNN averages its feature map: left as it is
    with pytest.raises(ValueError, match=r"--pooling applies to ViT classifiers; a 'resnet' classifier pools .* Drop --pooling"):
        image_pooling(resnet, "cls")
    with pytest.raises(ValueError, match=r"--pooling must be one of cls, mean, got 'avg'"):
        ImageClassifierArguments(pooling="avg")
