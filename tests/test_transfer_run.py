"""hfssl/transfer/run.py: one classifier trained through the stages of its strategy."""

from __future__ import annotations

import pytest

import hfssl
from hfssl.transfer import run as transfer_run

TEXT = dict(
    train_samples_per_class=8,
    max_eval_samples=40,
    max_seq_length=32,
    per_device_train_batch_size=16,
    eval_strategy="no",
    save_strategy="no",
    learning_rate=5e-3,
    disable_tqdm=True,
)


@pytest.mark.parametrize("summary_logged", [True, False])
@pytest.mark.slow
def test_lp_ft_counts_the_fine_tuning_steps_on_from_the_probes_last_step(tmp_path, monkeypatch, minilm_path, summary_logged):
    # 10 steps: a 3-step probe (--lp_fraction 0.3), then 7 of fine-tuning; logging every 2 steps does not divide 3,
    # so the probe's last logged loss is at step 2 while the fine-tuning stage starts after step 3.
    if not summary_logged:  # a stage's log need not end at its last step: here, without the Trainer's closing summary

        class WithoutSummary(transfer_run.TransferTrainer):
            def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
                if "train_runtime" not in logs:
                    super().log(logs, start_time)

        monkeypatch.setattr(transfer_run, "TransferTrainer", WithoutSummary)
    result = hfssl.run(
        "finetune_text",
        model_name_or_path=minilm_path,
        strategy="lp_ft",
        output_dir=str(tmp_path / "o"),
        logging_steps=2,
        max_steps=10,
        **TEXT,
    )
    log = result.fit.log_history
    assert [(e["stage"], e["step"]) for e in log if "loss" in e] == [
        ("linear_probe", 2),
        ("full", 3 + 2),
        ("full", 3 + 4),
        ("full", 3 + 6),
    ]
    assert [(e["stage"], e["step"]) for e in log if "train_runtime" in e] == (
        [("linear_probe", 3), ("full", 10)] if summary_logged else []
    )
    assert result.fit.train_metrics["train_steps"] == 10
