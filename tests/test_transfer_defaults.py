"""Fine-tuning defaults follow the starting model, the strategy and the labeled set's size, and never override the user."""

from __future__ import annotations

import json

import pytest

from conftest import load_recipe
from hfssl.options import parse_args
from hfssl.transfer.defaults import MIN_STEPS, PROBE_LR, PUBLISHED, SMALL, apply_transfer_defaults, starting_point


def parsed(recipe: str, *argv: str):
    module = load_recipe(recipe)
    *_, transfer, run_args = parse_args(module.OPTION_TYPES, ["--output_dir", "/tmp/unused", *argv], module.DEFAULTS)
    return transfer, run_args


def with_lineage(folder, lineage: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hfssl.json").write_text(json.dumps({"lineage": lineage}))
    return str(folder)


def test_starting_point_reads_the_lineage(tmp_path):
    assert starting_point("anything", from_scratch=True) == "small"
    assert starting_point(str(tmp_path), from_scratch=False) == "published"  # no hfssl.json: a Hub or local checkpoint
    scratch = with_lineage(tmp_path / "mlm", {"pretext": "mlm", "base_model": None, "parent": None})
    assert starting_point(scratch, False) == "small"
    dapt = with_lineage(tmp_path / "dapt", {"pretext": "mlm", "base_model": "minilm", "parent": None})
    assert starting_point(dapt, False) == "published"
    # a model fine-tuned from hfssl's small encoder is still that small encoder
    tuned = {"recipe": "finetune_text", "base_model": scratch, "parent": {"pretext": "mlm", "base_model": None}}
    assert starting_point(with_lineage(tmp_path / "tuned", tuned), False) == "small"


def test_a_published_text_encoder_gets_lp_ft_and_enough_steps_for_few_labels():
    transfer, run_args = parsed("finetune_text")
    chosen = apply_transfer_defaults("text", "published", 384, transfer, run_args, n_train=20 * 19)
    assert transfer.strategy == "lp_ft"
    assert run_args.learning_rate == PUBLISHED["lp_ft"] and transfer.lp_learning_rate == PROBE_LR
    # 2 epochs of 380 examples at batch 32 would be 24 steps
    assert run_args.max_steps == MIN_STEPS["text", "published"]
    assert run_args.eval_strategy == "steps" and run_args.eval_steps == 34
    assert chosen.scratch_learning_rate == SMALL["full"]  # the control trains random weights: the small-model rate
    assert set(chosen.applied) == {"strategy", "learning_rate", "lp_learning_rate", "max_steps", "eval_steps"}


def test_a_small_encoder_gets_full_fine_tuning_at_a_large_step():
    transfer, run_args = parsed("finetune_text")
    apply_transfer_defaults("text", "small", 128, transfer, run_args, n_train=41 * 20)
    assert transfer.strategy == "full" and run_args.learning_rate == SMALL["full"]
    assert run_args.max_steps == MIN_STEPS["text", "small"]


def test_many_labels_keep_the_epochs():
    transfer, run_args = parsed("finetune_text")
    chosen = apply_transfer_defaults("text", "small", 128, transfer, run_args, n_train=100_000)
    assert run_args.max_steps <= 0 and "max_steps" not in chosen.applied
    assert run_args.eval_strategy == "epoch"


@pytest.mark.parametrize(("strategy", "hidden", "rate"), [("lora", 192, 3e-3), ("linear_probe", 768, 1e-2), ("full", 768, 1e-4)])
def test_the_rate_follows_strategy_and_width(strategy, hidden, rate):
    transfer, run_args = parsed("finetune_image", "--strategy", strategy)
    apply_transfer_defaults("image", "small", hidden, transfer, run_args, n_train=600)
    assert run_args.learning_rate == pytest.approx(rate)
    assert transfer.strategy == strategy


def test_what_the_user_set_is_kept():
    transfer, run_args = parsed("finetune_text", "--strategy", "full", "--learning_rate", "5e-5", "--num_train_epochs", "3")
    chosen = apply_transfer_defaults("text", "published", 384, transfer, run_args, n_train=40)
    assert (transfer.strategy, run_args.learning_rate, run_args.num_train_epochs) == ("full", 5e-5, 3)
    assert run_args.max_steps <= 0 and chosen.applied == {}
    assert chosen.scratch_learning_rate == 5e-5  # a rate the user chose applies to the control too
    transfer, run_args = parsed("finetune_text", "--max_steps", "7", "--lp_learning_rate", "0.05")
    apply_transfer_defaults("text", "published", 384, transfer, run_args, n_train=40)
    assert run_args.max_steps == 7 and transfer.lp_learning_rate == 0.05
