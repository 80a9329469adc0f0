from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from hfssl.transfer.optim import L2SP, layer_decay_groups
from hfssl.transfer.run import TransferTrainer
from hfssl.transfer.strategies import find_layout


def tiny_bert(layers: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=100, num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_labels=3
        )
    )


def test_layer_decay_learning_rates_follow_depth():
    model = tiny_bert(3)
    layout = find_layout(model, set())
    decay_names = {n for n, _ in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n}
    groups = layer_decay_groups(model, layout, lr=1e-3, decay=0.5, weight_decay=0.01, decay_names=decay_names)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(lr_of) == len(params)  # every trainable weight in exactly one group
    assert sum(len(g["params"]) for g in groups) == len(params)
    expected = {  # lr x 0.5 ** (L + 1 - layer), L = 3
        "bert.embeddings.word_embeddings.weight": 1e-3 * 0.5**4,
        "bert.encoder.layer.0.attention.self.query.weight": 1e-3 * 0.5**3,
        "bert.encoder.layer.2.output.dense.weight": 1e-3 * 0.5**1,
        "bert.pooler.dense.weight": 1e-3,
        "classifier.weight": 1e-3,
    }
    for name, lr in expected.items():
        assert lr_of[id(params[name])] == pytest.approx(lr), name
    assert wd_of[id(params["classifier.weight"])] == 0.01 and wd_of[id(params["classifier.bias"])] == 0.0


def test_layer_decay_skips_frozen_weights():
    model = tiny_bert(2)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("classifier"))
    groups = layer_decay_groups(model, find_layout(model, set()), 1e-3, 0.75, 0.0, set())
    assert sum(len(g["params"]) for g in groups) == 2 and {g["lr"] for g in groups} == {1e-3}


def test_l2sp_matches_its_formula_and_leaves_the_head_alone():
    model = tiny_bert(2)
    penalty = L2SP(model, find_layout(model, set()), alpha=0.1, fresh=set())
    assert penalty(model).item() == 0.0
    assert not any(n.startswith("classifier") for n in penalty.start)
    with torch.no_grad():
        w = model.bert.encoder.layer[0].attention.self.query.weight
        w.add_(0.5)
        model.classifier.weight.add_(10.0)  # the head has no pretrained value to be pulled to
    value = penalty(model)
    assert value.item() == pytest.approx(0.5 * 0.1 * (0.5**2) * w.numel(), rel=1e-5)
    value.backward()
    assert torch.allclose(w.grad, torch.full_like(w, 0.1 * 0.5))
    assert model.classifier.weight.grad is None


def _trainer(tmp_path, model, **kw) -> TransferTrainer:
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(5, 100, (32, 10), generator=g).tolist(),
            "labels": torch.randint(0, 3, (32,), generator=g).tolist(),
        }
    )
    args = TrainingArguments(
        str(tmp_path),
        max_steps=8,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        **kw.pop("training", {}),
    )
    return TransferTrainer(model=model, args=args, train_dataset=data, layout=find_layout(model, set()), **kw)


def test_loss_has_class_weights_and_label_smoothing(tmp_path):
    model = tiny_bert(1).eval()
    weights = torch.tensor([1.0, 2.0, 0.5])
    trainer = _trainer(tmp_path, model, class_weights=weights, training={"label_smoothing_factor": 0.1})
    inputs = {"input_ids": torch.randint(5, 100, (6, 10)), "labels": torch.tensor([0, 1, 2, 2, 1, 0])}
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"]).logits
        loss = trainer.compute_loss(model, inputs)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits, inputs["labels"], weight=weights, label_smoothing=0.1).item(), rel=1e-5
    )
    assert loss.item() != pytest.approx(F.cross_entropy(logits, inputs["labels"]).item(), rel=1e-3)


def test_l2sp_keeps_fine_tuned_weights_near_the_start(tmp_path):
    distances = {}
    for alpha in (0.0, 100.0):
        model = tiny_bert(1)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        layout = find_layout(model, set())
        l2sp = L2SP(model, layout, alpha, set()) if alpha else None
        _trainer(tmp_path / str(alpha), model, l2sp=l2sp).train()
        distances[alpha] = sum(
            ((p.detach() - start[n]) ** 2).sum().item() for n, p in model.named_parameters() if not n.startswith("classifier")
        )
    assert distances[100.0] < 0.5 * distances[0.0], distances


def test_layer_decay_optimizer_is_built_from_the_groups(tmp_path):
    trainer = _trainer(tmp_path, tiny_bert(2), layer_decay=0.5, training={"optim": "adamw_torch"})
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([5e-3 * 0.5**k for k in (3, 2, 1, 0)])
