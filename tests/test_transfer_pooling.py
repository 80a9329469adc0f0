"""Pooling built into stock classes: ModernBERT's classifier reads the masked mean, ViT weights become a BEiT classifier
that pools by [CLS] (exactly ViT's head) or by the layer-normed patch mean, and both survive a plain reload; architectures
without native mean pooling default to [CLS] and mean-pool
only through custom code that plain loading refuses, and image models that pool by themselves take no --pooling."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BeitForImageClassification,
    BertConfig,
    DistilBertConfig,
    ModernBertConfig,
    ResNetConfig,
    RobertaConfig,
    ViTConfig,
    ViTForImageClassification,
)

from hfssl.args import ImageClassifierArguments, TextClassifierArguments
from hfssl.models import beit_config, vit_to_beit
from hfssl.transfer.models import load_classifier
from hfssl.transfer.pooling import image_pooling, native_mean_pooling, text_pooling

SMALL = dict(vocab_size=100, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1, num_labels=3)
LENGTHS = [7, 4]  # the second text is padded with 3 tokens


def _modernbert() -> ModernBertConfig:
    return ModernBertConfig(**SMALL, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 100, (len(LENGTHS), max(LENGTHS)), generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[1] * n + [0] * (max(LENGTHS) - n) for n in LENGTHS])
    return ids, mask


def test_modernbert_mean_pooling_is_the_head_on_the_masked_mean_and_survives_a_plain_reload(tmp_path):
    config = _modernbert()
    assert text_pooling(config, None) == "mean" and config.classifier_pooling == "mean"  # the default where it is native
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids, mask = _batch()
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = torch.stack([hidden[i, :n].mean(dim=0) for i, n in enumerate(LENGTHS)])  # padding left out
        expected = model.classifier(model.drop(model.head(mean)))
        logits = model(input_ids=ids, attention_mask=mask).logits
        other_padding = torch.where(mask.bool(), ids, torch.randint(5, 100, ids.shape))
        repadded = model(input_ids=other_padding, attention_mask=mask).logits
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits, logits)  # no hfssl code needed
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(repadded, logits, atol=1e-5)  # what the padding holds does not matter
    cls = _modernbert()
    assert text_pooling(cls, "cls") == "cls" and cls.classifier_pooling == "cls"


@pytest.mark.parametrize(
    "config",
    [
        BertConfig(**SMALL),
        RobertaConfig(**SMALL, pad_token_id=1),
        DistilBertConfig(vocab_size=100, dim=32, n_heads=2, hidden_dim=64, n_layers=1),
    ],
    ids=["bert", "roberta", "distilbert"],
)
def test_architectures_without_native_mean_pooling_default_to_cls(config):
    assert text_pooling(config, None) == "cls" and text_pooling(config, "cls") == "cls"
    assert text_pooling(config, "mean") == "mean" and not native_mean_pooling(config)
    with pytest.raises(ValueError, match=r"--pooling must be one of cls, mean, got 'max'"):
        TextClassifierArguments(pooling="max")


@pytest.mark.parametrize("config", [BertConfig(**SMALL), RobertaConfig(**SMALL, pad_token_id=1)], ids=["bert", "roberta"])
def test_mean_pooling_on_a_bert_family_encoder_is_custom_code_that_plain_loading_refuses(config, tmp_path):
    """`--pooling mean` on an encoder whose stock classifier reads [CLS]: the masked token mean of the checkpoint's own
    encoder, saved as custom code; `trust_remote_code=True` reloads it exactly, and plain loading fails loudly."""
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path / "encoder")
    model, fresh = load_classifier("text", str(tmp_path / "encoder"), ["a", "b", "c"], pooling="mean")
    model.eval()
    assert type(model).__name__ == "MeanPooledForSequenceClassification" and fresh == {"classifier.weight", "classifier.bias"}
    encoder = AutoModel.from_pretrained(tmp_path / "encoder").eval()
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())  # its own weights
    ids, mask = _batch()
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = torch.stack([hidden[i, :n].mean(dim=0) for i, n in enumerate(LENGTHS)])
        logits = model(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(logits, model.classifier(mean), atol=1e-5)
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "hfssl_mean_pooled" and saved["auto_map"]["AutoModelForSequenceClassification"]
    assert (tmp_path / "out" / "mean_pooled.py").is_file()  # the code travels with the weights
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits, logits)


VIT = ViTConfig(
    image_size=8,
    patch_size=4,
    num_channels=3,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_labels=3,
)


def _vit_and_beit(mean: bool) -> tuple[ViTForImageClassification, BeitForImageClassification]:
    torch.manual_seed(0)
    vit = ViTForImageClassification(VIT).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.3)
        for layer in vit.vit.layers:  # a large key bias: dropping it must still change nothing
            layer.attention.k_proj.bias.normal_(0, 3.0)
    beit = BeitForImageClassification(beit_config(vit.config, mean_pooling=mean)).eval()
    weights = vit_to_beit(vit.vit.state_dict(), mean, "beit.") | {
        k: v for k, v in vit.state_dict().items() if k.startswith("classifier.")
    }
    beit.load_state_dict(weights, strict=True)
    return vit, beit


def test_a_vit_is_exactly_a_beit_without_key_bias_and_with_cls_pooling():
    vit, beit = _vit_and_beit(mean=False)
    pixels = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(beit(pixel_values=pixels).logits, vit(pixel_values=pixels).logits, atol=1e-5, rtol=0)


def test_beit_mean_pooling_is_the_layer_norm_of_the_patch_mean_and_survives_a_plain_reload(tmp_path):
    vit, beit = _vit_and_beit(mean=True)
    pixels = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = vit.vit(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # before the final norm
        expected = vit.classifier(vit.vit.layernorm(states[:, 1:].mean(dim=1)))  # [CLS] left out of the mean
        logits = beit(pixel_values=pixels).logits
        assert torch.allclose(logits, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(logits, vit(pixel_values=pixels).logits, atol=1e-3)  # and it is not [CLS]
        beit.save_pretrained(tmp_path)
        reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
        assert torch.equal(reloaded(pixel_values=pixels).logits, logits)


def test_image_pooling_defaults_to_mean_for_pretrained_vit_and_is_refused_for_models_that_pool_themselves():
    assert image_pooling(VIT, None) == "mean" and image_pooling(VIT, "cls") == "cls"
    assert image_pooling(VIT, None, from_scratch=True) == "cls"  # [CLS] trains with the task there
    resnet = ResNetConfig(num_labels=3)
    assert image_pooling(resnet, None) is None  # a CNN averages its feature map: left as it is
    with pytest.raises(ValueError, match=r"--pooling applies to ViT classifiers; a 'resnet' classifier pools .* Drop --pooling"):
        image_pooling(resnet, "cls")
    with pytest.raises(ValueError, match=r"--pooling must be one of cls, mean, got 'avg'"):
        ImageClassifierArguments(pooling="avg")


def test_a_hub_beit_with_relative_positions_keeps_its_own_head_and_pooling(tmp_path):
    from types import SimpleNamespace

    from transformers import BeitConfig

    from hfssl.transfer.models import image_classifier_config, load_classifier

    BeitConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        use_relative_position_bias=True,
        use_mean_pooling=True,
    ).save_pretrained(tmp_path)
    args = SimpleNamespace(
        model_name_or_path=str(tmp_path), from_scratch=True, trust_remote_code=False, cache_dir=None, model_preset=None
    )
    config, pooling = image_classifier_config(args, ["a", "b"], None)
    assert pooling == "mean" and config.use_relative_position_bias  # not remapped as a ViT
    model, _ = load_classifier("image", str(tmp_path), ["a", "b"], from_scratch=True, config=config)
    assert type(model).__name__ == "BeitForImageClassification"
    with pytest.raises(ValueError, match=r"--pooling cls: this BEiT checkpoint pools by mean .* pass --pooling mean"):
        image_classifier_config(args, ["a", "b"], "cls")
