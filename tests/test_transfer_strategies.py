from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hfssl.args import TransferArguments
from hfssl.transfer.strategies import STRATEGIES, count_parameters, find_layout, layer_ids, lora_target_modules


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(vocab_size=100, num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_labels=3)
    )


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(
        ViTConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=4,
            num_labels=3,
        )
    )


def tiny_resnet() -> ResNetForImageClassification:
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))


def batch_for(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if isinstance(model.config, (ViTConfig, ResNetConfig)):
        return {"pixel_values": torch.randn(8, 3, 16, 16, generator=g), "labels": torch.randint(0, 3, (8,), generator=g)}
    return {"input_ids": torch.randint(5, 100, (8, 12), generator=g), "labels": torch.randint(0, 3, (8,), generator=g)}


def train_steps(model: torch.nn.Module, steps: int = 3) -> dict[str, torch.Tensor]:
    """A few AdamW steps on a fixed batch, the way Trainer does them (trainable parameters only); returns the start."""
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    batch = batch_for(model)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return start


def changed(model: torch.nn.Module, start: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if n in start and not torch.equal(p, start[n])}


def apply(strategy: str, model, fresh=(), **kw):
    args = TransferArguments(strategy=strategy, **kw)
    layout = find_layout(model, set(fresh))
    for stage in STRATEGIES[strategy][:1]:
        model = stage(model, args, layout)
    return model, layout


def test_layouts_of_text_vision_and_cnn_models():
    bert = find_layout(tiny_bert(), {"bert.pooler.dense.weight", "bert.pooler.dense.bias"})
    assert (bert.blocks, bert.depth, bert.head_modules) == ("bert.encoder.layer", 3, ["classifier", "bert.pooler.dense"])
    assert (find_layout(tiny_vit(), set()).blocks, find_layout(tiny_vit(), set()).depth) == ("vit.layers", 3)
    resnet = find_layout(tiny_resnet(), set())
    assert (resnet.blocks, resnet.depth, resnet.head_modules) == ("resnet.encoder.stages", 2, ["classifier"])
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, n_layers=2, dim=32, n_heads=2, hidden_dim=64))
    assert find_layout(distil, set()).head_modules == ["pre_classifier", "classifier"]


def test_layer_ids_count_embeddings_blocks_and_head():
    model = tiny_bert()
    ids = layer_ids(model, find_layout(model, set()))
    assert ids["bert.embeddings.word_embeddings.weight"] == 0
    assert ids["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert ids["bert.encoder.layer.2.output.dense.weight"] == 3
    assert ids["bert.pooler.dense.weight"] == 4 and ids["classifier.weight"] == 4


def test_full_trains_everything():
    model, _ = apply("full", tiny_bert())
    start = train_steps(model)
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads == set(start)
    assert {n for n in changed(model, start) if "embeddings.word" in n or "layer.0." in n}  # the bottom moved too


@pytest.mark.parametrize("make", [tiny_bert, tiny_vit, tiny_resnet])
def test_linear_probe_changes_only_the_head(make):
    model, layout = apply("linear_probe", make())
    start = train_steps(model)
    moved = changed(model, start)
    assert moved and all(n.startswith("classifier") for n in moved)
    assert count_parameters(model)[0] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))


def test_linear_probe_trains_a_pooler_the_checkpoint_lacked():
    model, _ = apply("linear_probe", tiny_bert(), fresh={"bert.pooler.dense.weight", "bert.pooler.dense.bias"})
    moved = changed(model, train_steps(model))
    assert {"bert.pooler.dense.weight", "classifier.weight"} <= moved
    assert all(n.startswith(("classifier", "bert.pooler")) for n in moved)


@pytest.mark.parametrize(
    "make, frozen, trained",
    [
        (
            tiny_bert,
            ("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1."),
            ("bert.encoder.layer.2.", "classifier"),
        ),
        (tiny_vit, ("vit.embeddings.", "vit.layers.0.", "vit.layers.1."), ("vit.layers.2.", "vit.layernorm", "classifier")),
    ],
)
def test_freeze_keeps_the_bottom_layers_and_embeddings(make, frozen, trained):
    model, _ = apply("freeze", make(), freeze_layers=2)
    moved = changed(model, train_steps(model))
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in moved if n.startswith(frozen)]
    for prefix in trained:
        assert [n for n in moved if n.startswith(prefix)], prefix
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(frozen)) and names


def test_freeze_deeper_than_the_model_fails_naming_the_depth():
    with pytest.raises(ValueError, match=r"--freeze_layers 4 is larger than the depth .*3 layers.*from 0 to 3"):
        apply("freeze", tiny_bert(), freeze_layers=4)


@pytest.mark.parametrize(
    "make, targets, rank",
    [(tiny_bert, ["query", "value"], 8), (tiny_vit, ["q_proj", "v_proj"], 8), (tiny_resnet, ["convolution"], 1)],
)  # the toy CNN has 8-channel convs
def test_lora_trains_adapters_and_head_only_and_far_fewer_parameters(make, targets, rank):
    full_trainable = count_parameters(make())[0]
    model, layout = apply("lora", make(), lora_r=rank)
    assert lora_target_modules(make(), find_layout(make(), set()), None) == targets
    trainable = count_parameters(model)[0]
    assert trainable < full_trainable / 5, (trainable, full_trainable)
    start = train_steps(model)
    moved = changed(model, start)
    assert moved and all("lora_" in n or "modules_to_save" in n for n in moved), moved - {n for n in moved if "lora_" in n}
    assert any("lora_B" in n for n in moved) and any("classifier" in n for n in moved)


def test_lora_with_unknown_target_lists_the_candidates():
    with pytest.raises(ValueError, match=r"named attn_q\. Candidate --lora_target_modules names: .*query.*value"):
        apply("lora", tiny_bert(), lora_target_modules="attn_q")


def test_lora_on_an_unknown_architecture_asks_for_targets():
    model = tiny_resnet()
    model.config.model_type = "my_cnn"  # no known defaults, no attention projections
    with pytest.raises(ValueError, match=r"does not know which modules of a 'my_cnn' model.*convolution"):
        apply("lora", model)


def test_lp_ft_is_a_probe_then_full_fine_tuning():
    assert [s.__name__ for s in STRATEGIES["lp_ft"]] == ["linear_probe", "full"]
