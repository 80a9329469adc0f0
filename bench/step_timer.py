"""The one instrument both sides of a throughput benchmark are timed with."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any, TypeVar

from transformers import TrainerCallback

T = TypeVar("T")
WARMUP_STEPS = 3  # excluded from the steady-state rate: one-time kernel selection, allocator growth


class StepTimer(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self.ends.append(time.perf_counter())

    def rate(self, per_step: int) -> float:
        """Items (tokens, images) per second over the steps after WARMUP_STEPS."""
        timed = self.ends[WARMUP_STEPS - 1 :]
        return (len(timed) - 1) * per_step / (timed[-1] - timed[0])


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a new Python process, so that nothing one path sets process-wide reaches the other.

    hfssl's recipes tune the process they run in (the malloc setting of `--keep_freed_memory`), and
    the stock path must run as a user would run run_mlm.py / run_mae.py: with the defaults.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
