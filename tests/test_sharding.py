"""hfssl.sharding: FSDP units, the unsharded model, the fallback warning (FSDP itself runs in test_scale_out.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from hfssl.sharding import gathered_state_dict, prepare_sharding, shardable_units, unsharded


def tiny(kind: str) -> torch.nn.Module:
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        ModernBertConfig,
        ModernBertForMaskedLM,
        ViTConfig,
        ViTForMaskedImageModeling,
        ViTMAEConfig,
        ViTMAEForPreTraining,
    )

    size = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    image = dict(image_size=16, patch_size=4)
    if kind == "modernbert":
        return ModernBertForMaskedLM(ModernBertConfig(vocab_size=100, pad_token_id=0, **size))
    if kind == "bert":
        return BertForMaskedLM(BertConfig(vocab_size=100, **size))
    if kind == "vit-mae":
        decoder = dict(
            decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64
        )
        return ViTMAEForPreTraining(ViTMAEConfig(**size, **image, **decoder))
    return ViTForMaskedImageModeling(ViTConfig(**size, **image))


# The embedding modules hold the input embeddings (ModernBERT's also the word embeddings its decoder shares), which
# accelerate shards as a unit of their own: inside a unit they would be sharded twice.
@pytest.mark.parametrize(
    "kind, units",
    [
        ("modernbert", ["ModernBertEncoderLayer"]),
        ("bert", ["BertLayer"]),
        ("vit-mae", ["ViTMAELayer", "ViTMAEDecoder"]),
        ("vit-simmim", ["ViTLayer"]),
    ],
)
def test_shardable_units_leave_out_the_classes_that_hold_the_embeddings(kind, units):
    model = tiny(kind)
    assert sorted(shardable_units(model)) == sorted(units)
    assert set(units) <= set(model._no_split_modules)


def test_a_unit_holding_a_parameter_tied_outside_it_is_left_out():  # a plain module: no get_*_embeddings
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

    class Model(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self) -> None:
            super().__init__()
            self.block, self.head = Block(), torch.nn.Linear(4, 4)

    model = Model()
    assert shardable_units(model) == ["Block"]
    model.head.weight = model.block.linear.weight
    assert shardable_units(model) == []


def test_an_unsharded_model_is_its_own_whole_copy():
    model = tiny("vit-simmim")
    assert unsharded(model) is model
    assert gathered_state_dict(model) is None


def test_an_fsdp_config_that_runs_without_fsdp_is_reported(monkeypatch, caplog):
    trainer = SimpleNamespace(is_fsdp_enabled=False, args=SimpleNamespace(device=torch.device("cpu")))
    with caplog.at_level(logging.WARNING, logger="hfssl.sharding"):
        prepare_sharding(trainer)
        assert not caplog.records
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        prepare_sharding(trainer)
    assert "accelerate runs FSDP only on accelerators" in caplog.text and "cpu processes" in caplog.text
