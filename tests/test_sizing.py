"""The model's size from the budget: the largest preset the budget trains to ~20 tokens per parameter."""

import json

import pytest

import hfssl.sizing
from conftest import load_recipe
from hfssl.models import TEXT_PRESETS, mlm_config
from hfssl.sizing import MAX_EPOCHS, TOKENS_PER_PARAMETER, choose_size, measure_tokens_per_second, non_embedding_parameters

CANDIDATES = [(name, mlm_config(None, name)) for name in TEXT_PRESETS]
NEEDED = {name: TOKENS_PER_PARAMETER * non_embedding_parameters(config) for name, config in CANDIDATES}
SHAPE = dict(seq_len=64, vocab_size=8192, mask_rate=0.3)


class Speeds:
    """A fake probe: tokens per second by hidden size; records what it was asked to measure."""

    def __init__(self, by_hidden):
        self.by_hidden, self.asked = by_hidden, []

    def __call__(self, config):
        self.asked.append(config.hidden_size)
        return self.by_hidden[config.hidden_size]


def test_a_slow_machine_gets_the_smallest_preset_and_probes_only_it():
    speeds = Speeds({128: 25_000, 256: 6_000})
    sizing = choose_size(CANDIDATES, seconds=600, tokens=None, corpus_tokens=None, measure=speeds, **SHAPE)
    assert sizing.preset == "tiny"
    # 15M tokens in 10 minutes cover tiny's 7.9M; even 4x mini's FLOP-scaled speed cannot buy its 63M: not probed
    assert speeds.asked == [128]
    assert sizing.considered["tiny"]["tokens"] == 25_000 * 600
    assert sizing.considered["mini"]["tokens"] < NEEDED["mini"]


def test_a_fast_machine_gets_the_largest_preset_its_budget_trains_well():
    speeds = Speeds({128: 2e6, 256: 1e6, 512: 4e5, 768: 1e5})
    sizing = choose_size(CANDIDATES, seconds=1800, tokens=None, corpus_tokens=None, measure=speeds, **SHAPE)
    assert NEEDED["small"] <= 4e5 * 1800 < NEEDED["base"]
    assert sizing.preset == "small"
    # base needs 1.7B tokens: even 4x small's FLOP-scaled speed buys fewer in 30 minutes, so it is not probed
    assert speeds.asked == [128, 256, 512]
    assert sizing.considered["base"]["tokens"] < NEEDED["base"]
    assert "small: 720.0M of 252.0M tokens, 400,000 tokens/s measured; base: at most 462.1M" in sizing.describe()


def test_the_corpus_caps_the_size_at_four_passes():
    speeds = Speeds({128: 2e6, 256: 1e6, 512: 4e5, 768: 3e5})
    corpus = NEEDED["mini"] // MAX_EPOCHS + 1  # four passes cover mini, not small
    sizing = choose_size(CANDIDATES, seconds=3600, tokens=None, corpus_tokens=corpus, measure=speeds, **SHAPE)
    assert sizing.preset == "mini"
    assert sizing.considered["small"]["tokens"] == MAX_EPOCHS * corpus
    assert 768 not in speeds.asked  # nothing larger is measured once the data rules a size out


def test_a_token_budget_needs_no_probe_and_both_budgets_take_the_smaller():
    tokens = NEEDED["mini"] + 1
    assert choose_size(CANDIDATES, seconds=None, tokens=tokens, corpus_tokens=None, **SHAPE).preset == "mini"
    slow = Speeds({128: 1e5, 256: 1e4})  # 10 minutes buy mini 6M tokens: fewer than the token budget
    assert choose_size(CANDIDATES, seconds=600, tokens=tokens, corpus_tokens=None, measure=slow, **SHAPE).preset == "tiny"
    with pytest.raises(ValueError, match="needs a budget"):
        choose_size(CANDIDATES, seconds=None, tokens=None, corpus_tokens=None, **SHAPE)


def test_the_probe_measures_real_training_steps():
    config = mlm_config(None, None, "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64")
    config.vocab_size, config.pad_token_id, config.cls_token_id, config.sep_token_id = 500, 0, 2, 3
    config.bos_token_id, config.eos_token_id = 2, 3
    speed = measure_tokens_per_second(config, batch_size=4, seq_len=16, mask_rate=0.3, device="cpu", bf16=False, steps=2)
    assert 100 < speed < 1e8


def test_mlm_sizes_an_open_model_from_its_budget_and_records_it(tmp_path, monkeypatch, caplog):
    """A token budget of one step buys mini (with the tokens-per-parameter ratio lowered for the test), not small."""
    per_step = 16 * 32  # --max_seq_length x --per_device_train_batch_size below
    monkeypatch.setattr(hfssl.sizing, "TOKENS_PER_PARAMETER", per_step / non_embedding_parameters(CANDIDATES[1][1]))
    out = tmp_path / "o"
    options = ["--max_corpus_documents", "300", "--vocab_size", "500", "--max_seq_length", "16"]
    options += ["--per_device_train_batch_size", "32", "--token_budget", str(per_step), "--eval_steps", "1"]
    with caplog.at_level("INFO", logger="hfssl.recipes.mlm"):
        result = load_recipe("mlm").main(options + ["--output_dir", str(out)])
    assert "Model size from the budget: --model_preset mini" in caplog.text
    record = json.loads((out / "hfssl.json").read_text())
    assert record["options"]["model"]["model_preset"] == "mini" and result.metrics["train_steps"] == 1
    assert json.loads((out / "config.json").read_text())["hidden_size"] == TEXT_PRESETS["mini"]["hidden_size"]


def test_a_named_size_is_kept(tmp_path, caplog):
    out = tmp_path / "o"
    options = ["--max_corpus_documents", "300", "--vocab_size", "500", "--max_seq_length", "16", "--model_preset", "tiny"]
    with caplog.at_level("INFO", logger="hfssl.recipes.mlm"):
        load_recipe("mlm").main(options + ["--token_budget", "512", "--eval_steps", "1", "--output_dir", str(out)])
    assert "Model size from the budget" not in caplog.text
    assert json.loads((out / "config.json").read_text())["hidden_size"] == TEXT_PRESETS["tiny"]["hidden_size"]
