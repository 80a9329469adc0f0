"""Fine-tuning defaults that follow the starting model, the strategy and the size of the labeled set.

A small encoder that hfssl pretrained from scratch (or one fine-tuned from random weights) wants a large step and
plain full fine-tuning; a published pretrained encoder such as MiniLM keeps more of what it knows with LP-FT (a
linear probe first, then everything) at a smaller step. A few labels give a handful of optimizer steps per epoch,
so a run trains for at least a fixed number of steps, however few the examples. Each value was chosen on the
validation splits of bench/ssl_gain.py (docs/benchmarks.md, "How the settings were chosen"); a recipe applies only
those the user did not set, and logs which.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from transformers.trainer_utils import IntervalStrategy

from hfssl.options import given
from hfssl.outputs import parent_lineage

__all__ = ["TransferDefaults", "apply_transfer_defaults", "starting_point"]

logger = logging.getLogger(__name__)

# Learning rate by strategy, for an encoder of BERT-mini size or smaller (hidden < 768). Chosen on validation: text,
# a 2-layer encoder pretrained by hfssl on WordNet glosses (full 1e-3, LoRA 3e-3, linear probe 1e-2, LP-FT 3e-4 with
# its probe at 1e-2); images, a ViT pretrained by MAE on Fashion-MNIST (full 1e-3, LoRA 3e-3, linear probe 1e-2).
SMALL = {"full": 1e-3, "freeze": 1e-3, "lora": 3e-3, "linear_probe": 1e-2, "lp_ft": 3e-4}
# A published text encoder (chosen with MiniLM-L6, 10 labels per class: LP-FT 0.525-0.544 for lr 1e-4-5e-4 against
# full fine-tuning's 0.447). LP-FT is its default strategy.
PUBLISHED = {"full": 1e-4, "freeze": 1e-4, "lora": 1e-3, "linear_probe": 1e-2, "lp_ft": 3e-4}
PROBE_LR = 1e-2  # lp_ft: the probe stage's learning rate, a linear probe's own
# Encoders of BERT-base width and wider take a tenth of the step (the usual 2e-5-1e-4 range for BERT-base; not
# measured here, where no such model is available offline). A linear probe trains only the head and keeps its rate.
WIDE = 768
# The fewest optimizer steps of a run that sets neither --max_steps nor --num_train_epochs, chosen on validation
# (10-100 labels per class): a small text encoder 300 (1,500 steps added nothing), a published one 100 (200 was
# no better), a small ViT 200 at 60 labels per class.
MIN_STEPS = {("text", "small"): 300, ("text", "published"): 100, ("image", "small"): 200, ("image", "published"): 200}


@dataclass
class TransferDefaults:
    """What `apply_transfer_defaults` chose: the starting point, the options it set, and the control's rate."""

    start: str  # "small" (trained from scratch here, or random weights) or "published"
    applied: dict[str, Any]
    scratch_learning_rate: float  # the from-scratch control's rate (full fine-tuning of random weights)


def starting_point(model_path: str | None, from_scratch: bool) -> str:
    """'small' for random weights or an encoder hfssl pretrained from scratch (its hfssl.json says so); 'published'
    for any other checkpoint (a Hub model, or one hfssl adapted from one)."""
    if from_scratch or model_path is None:
        return "small"
    lineage = parent_lineage(model_path)
    while lineage is not None:
        if "pretext" in lineage:  # an hfssl pretraining run: from scratch, or from a checkpoint
            return "published" if lineage.get("base_model") else "small"
        lineage = lineage.get("parent")  # a fine-tuned model: what it started from
    return "published"


def _rate(table: dict[str, float], strategy: str, hidden_size: int | None) -> float:
    rate = table[strategy]
    return rate / 10 if hidden_size and hidden_size >= WIDE and strategy != "linear_probe" else rate


def apply_transfer_defaults(
    modality: str, start: str, hidden_size: int | None, transfer: Any, run_args: Any, n_train: int
) -> TransferDefaults:
    """Set the strategy, learning rates and length the starting point calls for, where the user set none of them.

    Call after the labeled data is loaded (the length depends on its size) and before training.
    """
    applied: dict[str, Any] = {}
    user_transfer, user_run = given(transfer), given(run_args)
    if "strategy" not in user_transfer and modality == "text" and start == "published":
        transfer.strategy = applied["strategy"] = "lp_ft"
    table = SMALL if start == "small" else PUBLISHED
    if "learning_rate" not in user_run:
        run_args.learning_rate = applied["learning_rate"] = _rate(table, transfer.strategy, hidden_size)
    if transfer.strategy == "lp_ft" and "lp_learning_rate" not in user_transfer and transfer.lp_learning_rate is None:
        transfer.lp_learning_rate = applied["lp_learning_rate"] = PROBE_LR
    if not ({"max_steps", "num_train_epochs"} & user_run) and run_args.max_steps <= 0:
        per_step = run_args.train_batch_size * run_args.gradient_accumulation_steps * max(run_args.world_size, 1)
        epochs_steps = math.ceil(run_args.num_train_epochs * math.ceil(n_train / per_step))
        fewest = MIN_STEPS[modality, start]
        if epochs_steps < fewest:  # few labels: the epochs alone would give too few steps
            run_args.max_steps = applied["max_steps"] = fewest
            if run_args.eval_strategy == IntervalStrategy.EPOCH and "eval_strategy" not in user_run:
                # every epoch would now be every few steps: score the held-out split three times instead
                run_args.eval_strategy, run_args.eval_steps = IntervalStrategy.STEPS, math.ceil(fewest / 3)
                applied["eval_steps"] = run_args.eval_steps
    scratch_rate = run_args.learning_rate if "learning_rate" in user_run else _rate(SMALL, "full", hidden_size)
    if applied:
        what = "a published pretrained encoder" if start == "published" else "a small encoder trained from scratch"
        logger.info(
            "Fine-tuning defaults for %s and %s labeled examples: %s (set any of them to override)",
            what,
            f"{n_train:,}",
            ", ".join(f"--{k} {v}" for k, v in applied.items()),
        )
    return TransferDefaults(start, applied, scratch_rate)
