"""A recipe's run from start to finish: the checks before any compute, and the one shared ending.

    resume, push = start_run(run_args)            # logging, precision, output-dir checks, the push request
    ... build the data, the model and a TimedTrainer subclass; train ...
    return finish_run(trainer, record, push, summary)   # save atomically, card, summary, push -> Result

Data flows one way: recipes -> runs -> (outputs, runtime, cards, hub). Nothing here imports a recipe or the CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import Trainer, TrainingArguments

from hfssl.api import Result
from hfssl.budget import TimeBudget, parse_duration
from hfssl.cards import output_card
from hfssl.hub import PushRequest, publish, take_push_request
from hfssl.options import given, option_values
from hfssl.outputs import parent_lineage, prepare_output_dir, resolve_resume, save_output
from hfssl.precision import fp32_weights
from hfssl.runtime import hardware_name, keep_freed_memory, log_precision, setup_logging, use_all_cores
from hfssl.sharding import gathered_state_dict, prepare_sharding

__all__ = ["LossOnlyEvaluation", "TimedTrainer", "finish_run", "pretext_lineage", "run_record", "start_run"]

logger = logging.getLogger(__name__)


def start_run(run_args: Any) -> tuple[str | None, PushRequest | None]:
    """What every recipe does first: logging, the checkpoint to resume, output-dir checks, the push request."""
    setup_logging(run_args)
    if getattr(run_args, "time_budget", None) and "max_steps" not in given(run_args):
        run_args.max_steps = 10**9  # the budget sets the length; --max_steps, when given, caps it
    log_precision(run_args)
    threads = use_all_cores()
    if threads:
        logger.info("%d CPU threads per process (accelerate launch set 1; --num_cpu_threads_per_process N chooses)", threads)
    if getattr(run_args, "keep_freed_memory", False) and keep_freed_memory():
        logger.info("malloc keeps freed memory for reuse (--keep_freed_memory true)")
    resume = resolve_resume(run_args)
    prepare_output_dir(run_args, resume)
    if resume is not None:
        logger.info("Resuming from %s", resume)
    # The token leaves the run's arguments here: only the push uses it, and the Trainer pickles its
    # arguments into every checkpoint (take_push_request clears it).
    return resume, take_push_request(run_args)


class TimedTrainer(Trainer):
    """A Trainer that knows how long it trained, evaluation excluded, so a recipe's throughput is honest."""

    eval_seconds = 0.0  # wall time spent in evaluate()
    train_seconds = 0.0  # wall time of the last train(), evaluation excluded

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        budget = getattr(self.args, "time_budget", None)
        pace = tuple(name for name in ("eval_steps", "save_steps") if name not in given(self.args))
        self.budget = TimeBudget(parse_duration(budget), self, pace) if budget else None  # --time_budget sizes the run
        if self.budget is not None:
            self.add_callback(self.budget)
        prepare_sharding(self)

    _checkpointing = False  # during save_model: whether this save is a checkpoint (True) or the final model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's own save, which gathers the full state dict under FSDP and DeepSpeed ZeRO-3 on every process
        and hands it to `_save`; `_checkpointing` tells a recipe's `_save` whether to keep the whole training model
        (a checkpoint, so that training can resume) or write the model a user loads. Under FSDP2 the final model is
        gathered whole to the main process, even where checkpoints are sharded (hfssl.sharding)."""
        self._checkpointing = _internal_call
        try:
            if self.is_fsdp_enabled and not _internal_call and (state_dict := gathered_state_dict(self.model)) is not None:
                self._save(output_dir, state_dict=state_dict)  # the Trainer writes none under SHARDED_STATE_DICT
            else:
                super().save_model(output_dir, _internal_call)
        finally:
            self._checkpointing = False

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.eval_seconds += time.perf_counter() - start

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.budget is not None:
            self.budget.restore(kwargs.get("resume_from_checkpoint", args[0] if args else None))
        start, evaluating = time.perf_counter(), self.eval_seconds
        try:
            result = super().train(*args, **kwargs)
        finally:
            self.train_seconds = time.perf_counter() - start - (self.eval_seconds - evaluating)
        if self.budget is not None:
            self._count_samples_trained(result.metrics)
        return result

    def _count_samples_trained(self, metrics: dict[str, float]) -> None:
        """The Trainer counts samples per second from the step count it started with, which a time budget sets to
        a cap far above the steps it chose: count them from the steps trained instead (metrics and log alike)."""
        runtime = metrics.get("train_runtime")
        if not runtime:
            return
        per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(self.args.world_size, 1)
        rate = round(self.state.global_step * per_step / runtime, 3)
        metrics["train_samples_per_second"] = rate
        for entry in reversed(self.state.log_history):
            if "train_samples_per_second" in entry:
                entry["train_samples_per_second"] = rate
                break

    def save_training_module(
        self, output_dir: str | None, state_dict: dict | None, final: Callable[[Any, str, dict[str, Any]], None]
    ) -> None:
        """`_save` for a trainer whose model is a module of several models (ELECTRA's pair, CLIP's dual encoder and
        SigLIP bias): a checkpoint holds the whole module, in fp32, for an exact resume; the final save calls
        `final(module, output_dir, state_dict)` to write the model a user loads. `state_dict` is the gathered one
        under FSDP or DeepSpeed ZeRO-3."""
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        joint = self.accelerator.unwrap_model(self.model)
        with fp32_weights(self):
            state_dict = joint.state_dict() if state_dict is None else state_dict
            if not state_dict:  # DeepSpeed ZeRO-3 without gathered weights: it writes its own checkpoint next
                return
            if self._checkpointing:  # shared tensors are stored once per name: safetensors refuses shared storage
                safetensors.torch.save_file(
                    {k: v.detach().clone().contiguous() for k, v in state_dict.items()},
                    os.path.join(output_dir, "model.safetensors"),  # the name a resumed run loads
                    metadata={"format": "pt"},
                )
            else:
                final(joint, output_dir, state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)


class LossOnlyEvaluation:
    """For a Trainer subclass whose evaluation is its held-out loss (plus scores computed elsewhere): predictions
    and labels are not gathered."""

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[Any, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def pretext_lineage(pretext: str, data: str, base_model: str | None) -> dict[str, Any]:
    """The lineage of a pretraining run: its pretext, data and starting model (with that model's own lineage)."""
    return dict(pretext=pretext, data=data, base_model=base_model, parent=parent_lineage(base_model))


def _values(options: Any) -> Any:
    """Options as they go into hfssl.json: what can be typed (an in-memory dataset left out)."""
    if isinstance(options, TrainingArguments):
        return options.to_dict()
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return option_values(options)
    return options


def run_record(
    recipe: str, lineage: dict[str, Any], options: dict[str, Any], metrics: dict[str, Any], **facts: Any
) -> dict[str, Any]:
    """The content of hfssl.json: recipe, lineage, options (dataclasses as their typed values), metrics, hardware."""
    return dict(
        recipe=recipe,
        lineage=lineage,
        options={k: _values(v) for k, v in options.items()},
        metrics=metrics,
        hardware=hardware_name(),
        **facts,
    )


def finish_run(
    trainer: Trainer,
    record: dict[str, Any],
    push: PushRequest | None,
    summary: Callable[[], str],
    *,
    extra: Callable[[Path], None] | None = None,
    log_history: list[dict[str, Any]] | None = None,
    fit: Any = None,
) -> Result:
    """Every recipe's ending: save the output atomically with its card, print the summary, push when asked.

    `summary` runs on the main process after the output is saved (it may read the saved model); `extra`
    writes recipe-specific files into the staging folder; `log_history` replaces the trainer's own where
    a run had several trainers. A failed push raises PushError after the summary: the output is complete.
    """
    with warnings.catch_warnings():  # peft looks for a LoRA adapter's base while the output is still being written
        warnings.filterwarnings("ignore", message="Could not find a config file")
        save_output(trainer, record, card=lambda staging: output_card(record, staging), extra=extra, log_history=log_history)
    output_dir = trainer.args.output_dir
    pushed = None
    if trainer.is_world_process_zero():
        print("\n" + summary())
        pushed = publish(push, output_dir)
    return Result(record["recipe"], Path(output_dir), record["metrics"], fit=fit, pushed_to=pushed)
