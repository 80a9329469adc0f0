from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    EvalPrediction,
    ModernBertConfig,
    RobertaConfig,
)

from hfssl.args import MaskingArguments
from hfssl.data.text import tokenize_and_pack
from hfssl.pretext.masked_tokens import (
    MaskedLMTrainer,
    build_masker,
    head_parameters,
    masked_lm_metrics,
    masked_token_nll,
    mlm_head_module,
    sparse_head,
)

TEXT = ["Serialization of hierarchical configurations uncovers unexpectedly idiosyncratic incompatibilities."] * 8


@pytest.mark.parametrize("tokenizer_name", ["wordpiece", "bpe"])
@pytest.mark.parametrize("line_by_line", [True, False])
def test_whole_word_masking_masks_all_pieces_together(request, tokenizer_name, line_by_line):
    tok = request.getfixturevalue(tokenizer_name)
    raw = DatasetDict(train=Dataset.from_dict({"text": TEXT}))
    ds = tokenize_and_pack(raw, tok, "text", max_seq_length=24, line_by_line=line_by_line, whole_word_mask=True)["train"]
    # word ids of one example, straight from the tokenizer, to check against
    enc = tok(TEXT[0], add_special_tokens=False)
    pieces_per_word = np.bincount([w for w in enc.word_ids() if w is not None])
    assert pieces_per_word.max() > 1, "the test text must contain multi-piece words"
    collate = build_masker(tok, MaskingArguments(mlm_probability=0.3, whole_word_mask=True), seed=0)
    masked_words = partial_words = 0
    for _ in range(20):
        batch = collate([dict(ex) for ex in ds])
        offsets = np.array([ex["offset_mapping"] for ex in ds])[:, :, 0]
        selected = batch["labels"].numpy() != -100
        for row in range(len(offsets)):
            for word in set(offsets[row]) - {0}:
                in_word = selected[row][offsets[row] == word]
                masked_words += in_word.all()
                partial_words += in_word.any() and not in_word.all()
    assert masked_words > 20
    assert partial_words == 0


def test_masking_rates_follow_the_options(wordpiece):
    ids = wordpiece(" ".join(TEXT * 4), truncation=True, max_length=128)["input_ids"]
    collate = build_masker(
        wordpiece, MaskingArguments(mlm_probability=0.3, mask_replace_prob=0.5, random_replace_prob=0.25), seed=0
    )
    batch = collate([{"input_ids": ids} for _ in range(64)])
    selected = batch["labels"] != -100
    assert abs(selected.float().mean().item() - 0.3) < 0.03
    as_mask = (batch["input_ids"] == wordpiece.mask_token_id) & selected
    assert abs(as_mask.sum().item() / selected.sum().item() - 0.5) < 0.05
    assert not selected[:, 0].any() and not selected[:, -1].any()  # [CLS] / [SEP] never selected


def _tiny(config_cls, **kw):
    return config_cls(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        **kw,
    )


CONFIGS = {
    "bert": lambda: _tiny(BertConfig),
    "roberta": lambda: _tiny(RobertaConfig),
    "electra": lambda: _tiny(ElectraConfig, embedding_size=16),
    "distilbert": lambda: DistilBertConfig(
        vocab_size=300, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64, pad_token_id=0
    ),
    "modernbert": lambda: _tiny(ModernBertConfig, global_attn_every_n_layers=1, local_attention=16),
}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_sparse_head_loss_equals_dense_loss(arch):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(CONFIGS[arch]()).eval()
    assert mlm_head_module(model) is not None
    input_ids = torch.randint(5, 300, (4, 40))
    labels = torch.full_like(input_ids, -100)
    selected = torch.rand(input_ids.shape) < 0.2
    labels[selected] = input_ids[selected]
    dense = model(input_ids=input_ids, labels=labels).loss
    with sparse_head(model, selected) as active:
        logits = model(input_ids=input_ids).logits
    assert active and logits.shape == (int(selected.sum()), 300)
    sparse = torch.nn.functional.cross_entropy(logits, labels[selected])
    assert torch.allclose(sparse, dense, atol=1e-5), (sparse.item(), dense.item())
    # gradients agree too
    model.zero_grad()
    model(input_ids=input_ids, labels=labels).loss.backward()
    dense_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    with sparse_head(model, selected):
        torch.nn.functional.cross_entropy(model(input_ids=input_ids).logits, labels[selected]).backward()
    sparse_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(dense_grads, sparse_grads))


@pytest.mark.parametrize("vocab", [300, 30522])
def test_masked_token_nll_equals_cross_entropy_and_its_gradient(vocab):
    torch.manual_seed(0)
    logits = (torch.randn(70, vocab) * 3).requires_grad_()  # 70 rows: several chunks and a partial one at 30,522
    targets = torch.randint(0, vocab, (70,))
    weights = torch.rand(70)  # a non-uniform upstream gradient
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    (expected * weights).sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None
    nll = masked_token_nll(logits, targets)
    assert nll.dtype == torch.float32 and torch.allclose(nll, expected, atol=1e-5)
    (nll * weights).sum().backward()
    assert torch.allclose(logits.grad, expected_grad, atol=1e-6)
    # bf16 logits: an fp32 loss, a bf16 gradient, both as accurate as bf16 inputs allow
    low = logits.detach().bfloat16().requires_grad_()
    nll_low = masked_token_nll(low, targets)
    reference = torch.nn.functional.cross_entropy(low.detach().float(), targets, reduction="none")
    assert nll_low.dtype == torch.float32 and torch.allclose(nll_low, reference, atol=1e-5)
    nll_low.mean().backward()
    high = low.detach().float().requires_grad_()
    torch.nn.functional.cross_entropy(high, targets).backward()
    assert low.grad.dtype == torch.bfloat16
    assert torch.allclose(low.grad.float(), high.grad, rtol=1e-2, atol=1e-6)


def test_masked_lm_metrics_are_token_weighted():
    preds = np.array([[1, 0.5], [2, 1.5], [3, 1.0], [-100, -100]], dtype=np.float32)
    labels = np.array([1, 5, 3, -100])
    m = masked_lm_metrics(EvalPrediction(predictions=preds, label_ids=labels))
    assert m["mlm_loss"] == pytest.approx(1.0)
    assert m["perplexity"] == pytest.approx(np.e)
    assert m["masked_accuracy"] == pytest.approx(2 / 3)


def test_masked_lm_metrics_ignore_gather_padding():
    """Batches / processes with different numbers of masked tokens arrive as (B, N_max, 2), padded with -100."""
    preds = np.full((2, 3, 2), -100, dtype=np.float32)
    labels = np.full((2, 3), -100)
    preds[0, :2], labels[0, :2] = [[1, 0.5], [2, 1.5]], [1, 5]
    preds[1, :1], labels[1, :1] = [[3, 1.0]], [3]
    m = masked_lm_metrics(EvalPrediction(predictions=preds, label_ids=labels))
    assert m["mlm_loss"] == pytest.approx(1.0)
    assert m["masked_accuracy"] == pytest.approx(2 / 3)


def test_pretraining_dropout_changes_layers_not_the_saved_config(tmp_path):
    from hfssl.models import set_dropout

    model = AutoModelForMaskedLM.from_config(CONFIGS["bert"]())
    set_dropout(model, 0.0)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.config.hidden_dropout_prob == 0.1  # fine-tuning gets the architecture's dropout back
    assert any(m.p == 0.1 for m in reloaded.modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.parametrize("config_cls", [BertConfig, DistilBertConfig, ModernBertConfig])
def test_head_learning_rate_applies_to_the_head_only_and_follows_the_schedule(tmp_path, wordpiece, config_cls):
    """--head_learning_rate: the head's own weights get their lr; the tied decoder stays with the encoder's."""
    from hfssl.args import RunArguments

    kw = dict(
        vocab_size=len(wordpiece),
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=wordpiece.pad_token_id,
    )
    kw.update(dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64) if config_cls is DistilBertConfig else dict(num_hidden_layers=1))
    model = AutoModelForMaskedLM.from_config(config_cls(**kw))
    args = RunArguments(
        output_dir=str(tmp_path), learning_rate=1e-4, warmup_steps=2, max_steps=10, report_to="none", use_cpu=True
    )
    trainer = MaskedLMTrainer(model=model, args=args, masker=build_masker(wordpiece, MaskingArguments()), head_learning_rate=1e-2)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    head = {id(p) for p in head_parameters(model)}
    embeddings = model.get_input_embeddings().weight
    assert id(embeddings) not in head and id(model.get_output_embeddings().weight) not in head  # tied: the encoder's
    groups = trainer.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    for g in groups:  # every group is all-head at the head lr, or all-encoder at the base lr
        assert {id(p) in head for p in g["params"]} == {g["initial_lr"] == 1e-2}
    assert {g["initial_lr"] for g in groups} == {1e-4, 1e-2}
    for _ in range(5):  # warm-up then decay scale both lrs by the same factor
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        lrs = {g["initial_lr"]: g["lr"] for g in groups}
        assert lrs[1e-2] == pytest.approx(100 * lrs[1e-4]) and lrs[1e-4] > 0


def test_head_learning_rate_is_refused_when_deepspeed_builds_the_optimizer(tmp_path, wordpiece):
    from types import SimpleNamespace

    from hfssl.args import RunArguments

    model = AutoModelForMaskedLM.from_config(
        BertConfig(vocab_size=len(wordpiece), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    args = RunArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    args.hf_deepspeed_config = SimpleNamespace(config={"optimizer": {"type": "AdamW"}})  # what a DeepSpeed config sets
    with pytest.raises(ValueError, match="--head_learning_rate cannot apply"):
        MaskedLMTrainer(model=model, args=args, masker=build_masker(wordpiece, MaskingArguments()), head_learning_rate=1e-3)
    MaskedLMTrainer(model=model, args=args, masker=build_masker(wordpiece, MaskingArguments()))  # without it: fine
