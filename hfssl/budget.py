"""A pretraining budget in wall-clock time: `--time_budget 10m` sizes the run's steps from its measured speed.

Cramming (Geiping & Goldstein 2023) fixes the compute and derives the rest. Here the budget fixes the number of
optimizer steps once, early: after a few steps to warm up, the speed of the next few is measured, one evaluation is
timed (a kNN probe or a retrieval scorer can cost far more than a step), and the steps that fit in the time left,
the run's evaluations included, become the run's length. The learning-rate schedule, its warmup
and decay, is then rebuilt for that length, so warmup and decay follow the budget, and from there on the run is
an ordinary step-based run: deterministic, resumable, and identical across processes (the main process's figure
is broadcast). The chosen step count is recorded (hfssl.json's `train_steps`), so `--max_steps N` reproduces the
run without a budget. A `--max_steps` the user gave stays an upper bound: the run stops at whichever comes first.

Hand-written: the Trainer has a step or epoch budget, not a time budget whose schedule spans it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.optimization import get_scheduler

__all__ = ["BUDGET_FILE", "TimeBudget", "broadcast_from_main", "parse_count", "parse_duration", "steps_for_tokens"]

logger = logging.getLogger(__name__)

BUDGET_FILE = "hfssl_budget.json"  # in each checkpoint: the step count the budget chose, for an exact resume
WARMUP_STEPS = 3  # not timed: the first steps allocate memory and compile kernels
TIMED_STEPS = 10
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `1.5h` or a bare number of seconds, in seconds; ValueError naming --time_budget otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--time_budget must be a positive duration such as 90s, 10m or 1.5h, got {text!r}.")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class TimeBudget(TrainerCallback):
    """Sizes a run to `seconds` of training (evaluation included) from the speed of its first steps.

    `trainer` is the Trainer the callback belongs to: its learning-rate schedule is rebuilt for the chosen length.
    """

    def __init__(self, seconds: float, trainer: Any, pace: tuple[str, ...] = ("eval_steps", "save_steps")) -> None:
        self.seconds = seconds
        self.trainer = trainer
        self.pace = pace  # the intervals spread over the chosen length (four per run): those the user did not set
        self.total: int | None = None  # the run's length once chosen (or restored from a checkpoint)
        self._started = self._warm = 0.0
        self._first_step = 0

    def restore(self, checkpoint: str | None) -> None:
        """Resume with the length chosen before the interruption, so the schedule continues exactly."""
        path = Path(checkpoint or "") / BUDGET_FILE
        if checkpoint and path.is_file():
            self.total = int(json.loads(path.read_text())["total_steps"])

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()
        self._first_step = state.global_step  # above 0 when resuming
        if self.total is not None:  # resumed after the length was chosen: it holds
            self._apply(args, state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step, done = state.global_step, state.global_step - self._first_step
        if self.total is not None:
            return
        if done == WARMUP_STEPS:
            self._warm = time.perf_counter()
        elif done == WARMUP_STEPS + TIMED_STEPS or step >= state.max_steps:
            now = time.perf_counter()
            timed = done > WARMUP_STEPS
            seconds_per_step = (now - self._warm) / (done - WARMUP_STEPS) if timed else (now - self._started) / max(done, 1)
            per_evaluation, evaluations = seconds_per_step, 1
            if args.eval_strategy != "no" and step < state.max_steps:  # one evaluation now, timed: the paced four and
                # the final one cost as much (a run already at --max_steps is over: nothing left to size)
                flags = dict(vars(control))  # evaluate() clears the step's log / eval / save requests: keep them
                self.trainer.evaluate()
                vars(control).update(flags)
                per_evaluation, evaluations = max(seconds_per_step, time.perf_counter() - now), 5
                now = time.perf_counter()
            left = self.seconds - (now - self._started) - evaluations * per_evaluation
            fits = step + max(0, math.floor(left / seconds_per_step))
            self.total = broadcast_from_main(max(step, min(state.max_steps, fits)))
            logger.info(
                "--time_budget %s: %.2f s per step, so %d steps (the learning-rate schedule spans them; --max_steps %d "
                "repeats this run without a budget)",
                _format(self.seconds),
                seconds_per_step,
                self.total,
                self.total,
            )
            self._apply(args, state)
            if step >= self.total:
                control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.total is not None and checkpoint.is_dir() and state.is_world_process_zero:
            (checkpoint / BUDGET_FILE).write_text(json.dumps({"total_steps": self.total}) + "\n")

    def _apply(self, args: Any, state: Any) -> None:
        """The run is `self.total` steps long from here on: stop, evaluation, saving and the schedule follow."""
        state.max_steps = self.total
        for callback in self.trainer.callback_handler.callbacks:  # the progress bar counts to the chosen length
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.total = self.total
                bar.refresh()
        for interval in self.pace:  # four evaluations and checkpoints over the run
            setattr(state, interval, max(1, math.ceil(self.total / 4)))
        trainer = self.trainer
        if trainer.lr_scheduler is None or trainer.optimizer is None:
            return
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper holds the real one
        schedule = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(self.total),
            num_training_steps=self.total,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
        )
        with warnings.catch_warnings():  # fast-forwarding a fresh schedule: no optimizer step between its steps
            warnings.simplefilter("ignore")
            for _ in range(state.global_step):
                schedule.step()
        trainer.lr_scheduler = schedule


def broadcast_from_main(value: int) -> int:
    """The main process's value on every process, so all of them train the same number of steps."""
    from accelerate.utils import broadcast_object_list

    return int(broadcast_object_list([value], from_process=0)[0])


def parse_count(text: str) -> int:
    """`20M`, `1.5e8`, `300k` or `2B` tokens, as a number; ValueError naming --token_budget otherwise."""
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
    raw = str(text).strip().lower()
    try:
        value = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 1:
        raise ValueError(f"--token_budget must be a positive token count such as 20M, 300k or 1.5e8, got {text!r}.")
    return int(value)


def steps_for_tokens(tokens: int, tokens_per_step: int) -> int:
    """The optimizer steps that train on `tokens` tokens (at least one)."""
    return max(1, math.ceil(tokens / tokens_per_step))


def _format(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
