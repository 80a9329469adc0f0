"""bf16 weights with fp32 master weights (hfssl/precision.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig

from conftest import load_recipe
from hfssl.precision import MasterWeightOptimizer


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return AutoModelForMaskedLM.from_config(config)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item()


def test_masters_follow_an_fp32_optimizer_given_the_same_gradients_and_the_model_stays_bf16():
    model = _model()
    masters = list(dict.fromkeys(model.parameters()))  # the fp32 parameters become the masters
    reference = [p.detach().clone().requires_grad_() for p in masters]
    optimizer = MasterWeightOptimizer(torch.optim.AdamW(masters, lr=1e-2), model)
    reference_optimizer = torch.optim.AdamW(reference, lr=1e-2)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # still tied
    ids = torch.randint(5, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(8):
        losses.append(_step(model, optimizer, ids))
        lows = list(dict.fromkeys(model.parameters()))
        for low, ref in zip(lows, reference):
            ref.grad = low.grad.float()
        optimizer.step()
        reference_optimizer.step()
        optimizer.zero_grad()
        for low, master, ref in zip(lows, masters, reference):
            assert torch.equal(master, ref)  # the update itself is exact fp32
            assert torch.equal(low, master.to(torch.bfloat16))  # the model holds the rounded masters
    assert losses[-1] < losses[0] - 0.5, losses


def test_state_dict_carries_the_masters_and_restore_gives_them_back():
    ids = torch.randint(5, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    model = _model()
    optimizer = MasterWeightOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model)
    for _ in range(3):
        _step(model, optimizer, ids)
        optimizer.step()
        optimizer.zero_grad()
    state = copy.deepcopy(optimizer.state_dict())  # as a checkpoint would hold it: not the live tensors
    other = _model(seed=5)  # different weights: everything must come from the state dict
    resumed = MasterWeightOptimizer(torch.optim.AdamW(other.parameters(), lr=1e-2), other)
    resumed.load_state_dict(state)
    for a, b in ((model, optimizer), (other, resumed)):
        _step(a, b, ids)
        b.step()
        b.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))
    masters = [m.clone() for m in optimizer.state_dict()["masters"]]
    optimizer.restore()
    params = list(dict.fromkeys(model.parameters()))
    assert {p.dtype for p in params} == {torch.float32}
    assert all(torch.equal(p, m) for p, m in zip(params, masters))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    try:
        optimizer.step()
    except RuntimeError as err:
        assert "after restore()" in str(err)
    else:
        raise AssertionError("step() after restore() must fail")


@pytest.mark.slow
def test_mlm_recipe_with_bf16_weights_saves_fp32_and_learns(tmp_path):
    out = tmp_path / "out"
    metrics = (
        load_recipe("mlm")
        .main(
            [
                "--bf16",
                "true",
                "--bf16_weights",
                "true",
                "--max_steps",
                "30",
                "--max_corpus_documents",
                "300",
                "--vocab_size",
                "500",
                "--eval_steps",
                "30",
                "--save_steps",
                "30",
                "--logging_steps",
                "5",
                "--output_dir",
                str(out),
            ]
        )
        .metrics
    )
    for folder in (out, out / "checkpoint-30"):  # the final model and the checkpoint both hold the fp32 masters
        with safe_open(folder / "model.safetensors", "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}, folder
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.float32
    assert metrics["train_loss"] < 6.3, metrics  # from ln(500) = 6.2 at start: it learned


@pytest.mark.parametrize("method", ["mae", "simmim"])
@pytest.mark.slow
def test_mim_recipe_with_bf16_weights_learns_and_saves_an_fp32_encoder(tmp_path, method):
    # MAE's frozen sin-cos position embeddings must turn bf16 with the rest, or its layer norms meet fp32 inputs.
    out = tmp_path / "out"
    encoder = "num_hidden_layers=2,hidden_size=64,num_attention_heads=2,intermediate_size=128"
    decoder = ",decoder_num_hidden_layers=1,decoder_hidden_size=64,decoder_num_attention_heads=2,decoder_intermediate_size=128"
    load_recipe("mim").main(
        [
            "--method",
            method,
            "--config_overrides",
            encoder + (decoder if method == "mae" else ""),
            "--bf16",
            "true",
            "--bf16_weights",
            "true",
            "--max_steps",
            "60",
            "--max_train_samples",
            "640",
            "--probe_samples",
            "256",
            "--per_device_train_batch_size",
            "64",
            "--learning_rate",
            "2e-3",
            "--logging_steps",
            "10",
            "--save_steps",
            "60",
            "--eval_steps",
            "60",
            "--output_dir",
            str(out),
        ]
    )
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < 0.8 * losses[0], losses
    for folder in (out, out / "checkpoint-60"):
        with safe_open(folder / "model.safetensors", "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}, folder
    assert next(AutoModel.from_pretrained(out).parameters()).dtype == torch.float32


def test_frozen_parameters_turn_bf16_and_come_back_unchanged():
    model = _model()
    frozen = model.bert.embeddings.position_embeddings.weight
    frozen.requires_grad_(False)
    original = frozen.detach().clone()
    optimizer = MasterWeightOptimizer(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2), model)
    assert model.bert.embeddings.position_embeddings.weight.dtype == torch.bfloat16
    ids = torch.randint(5, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    _step(model, optimizer, ids)
    optimizer.step()
    optimizer.restore()
    assert model.bert.embeddings.position_embeddings.weight is frozen and torch.equal(frozen, original)
