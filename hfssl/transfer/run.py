"""Train, score, repeat over seeds and save a transfer run: everything finetune_text.py and finetune_image.py share.

One run is: build the classifier, apply each stage of the strategy (two for lp_ft), train each
with a `TransferTrainer`, then score the held-out set once with the shipped `evaluate` module.
A LoRA output is the adapter (peft's format) beside its base in the same directory: the frozen
weights with this task's labels in config.json and the trained head, so that
`AutoPeftModelForSequenceClassification.from_pretrained(out)` and `pipeline(model=out)` rebuild
the classifier for the right classes from the output (or its repo) alone. `--merge_lora` adds `merged/`.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer, set_seed
from transformers.trainer_utils import SaveStrategy

from hfssl.data.classification import balanced_class_weights
from hfssl.metrics.baselines import fits_baseline, verdict
from hfssl.metrics.report import classification_metrics, load_metric, majority_accuracy, save_confusion_matrix, scalar_scores
from hfssl.outputs import parent_lineage, write_json
from hfssl.runs import run_record
from hfssl.runtime import hardware_name
from hfssl.transfer.optim import L2SP, layer_decay_groups
from hfssl.transfer.strategies import STRATEGIES, Layout, count_parameters, find_layout

__all__ = ["Fit", "TransferSetup", "TransferTrainer", "fit", "run_transfer", "summary_text", "transfer_files", "transfer_record"]

logger = logging.getLogger(__name__)


class TransferTrainer(Trainer):
    """A Trainer whose loss is cross-entropy with optional class weights and label smoothing, plus L2-SP;
    with layer-wise learning-rate decay, and without augmentation when evaluating.

    The loss is a per-batch mean, so the Trainer scales it for gradient accumulation.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        layout: Layout,
        class_weights: torch.Tensor | None = None,
        l2sp: L2SP | None = None,
        layer_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.layout, self.class_weights, self.l2sp, self.layer_decay = layout, class_weights, l2sp, layer_decay

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = None if self.class_weights is None else self.class_weights.to(outputs.logits.device)
        loss = F.cross_entropy(outputs.logits.float(), labels, weight=weight, label_smoothing=self.args.label_smoothing_factor)
        if self.l2sp is not None and model.training:
            loss = loss + self.l2sp(self.accelerator.unwrap_model(model))
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.layer_decay is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = layer_decay_groups(
            opt_model,
            self.layout,
            self.args.learning_rate,
            self.layer_decay,
            self.args.weight_decay,
            set(self.get_decay_parameter_names(opt_model)),
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _without_augmentation(self, make: Callable[..., Any], *args: Any) -> Any:
        training_collator = self.data_collator
        if hasattr(training_collator, "for_evaluation"):
            self.data_collator = training_collator.for_evaluation(self.args.seed)
        try:
            return make(*args)
        finally:
            self.data_collator = training_collator

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return self._without_augmentation(super().get_eval_dataloader, eval_dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        """Held-out examples in their own order (the Trainer groups them by length under group_by_length), so that
        the predictions line up with the data they score."""
        if self.args.world_size <= 1 and eval_dataset is not None:
            return torch.utils.data.SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        return self._without_augmentation(super().get_test_dataloader, test_dataset)


@dataclass
class TransferSetup:
    """What a recipe prepares: how to build a fresh classifier, the encoded data, and its labels."""

    build: Callable[[], tuple[PreTrainedModel, set[str]]]  # a fresh classifier and its freshly initialised weights
    train_dataset: Any
    eval_dataset: Any
    collator: Any
    processing_class: Any
    label_names: list[str]
    train_labels: np.ndarray
    eval_labels: np.ndarray
    # the classic baseline on the same split (hfssl.metrics.baselines): () -> {"name", "accuracy", "f1_macro"}
    baseline: Callable[[], dict[str, Any]] | None = None
    build_scratch: Callable[[], tuple[PreTrainedModel, set[str]]] | None = None  # --controls scratch: random weights
    scratch_learning_rate: float | None = None  # the control's rate (default: the model's)


@dataclass
class Fit:
    """One trained classifier and its scores."""

    trainer: TransferTrainer
    layout: Layout
    eval_results: dict[str, Any]  # eval_* scalars, eval_per_class, eval_confusion_matrix
    train_metrics: dict[str, float]
    parameters: dict[str, int]  # trainable (per stage), full
    log_history: list[dict[str, Any]]  # the Trainer's log of every stage, steps counted across stages
    predictions: np.ndarray  # the predicted class of each held-out example, behind eval_results
    seed_results: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # the classic baseline's name, when one was fitted (eval_baseline_* in eval_results)

    @property
    def model(self) -> nn.Module:
        """The trained model as saved: unwrapped, without the Trainer's mixed-precision (autocast) forward."""
        return self.trainer.accelerator.unwrap_model(self.trainer.model, keep_fp32_wrapper=False)


def _stage_arguments(run_args: Any, transfer: Any, n_stages: int, n_train: int) -> list[Any]:
    """TrainingArguments per stage: lp_ft splits the step budget and gives the probe its own learning rate."""
    if n_stages == 1:
        return [run_args]
    per_step = run_args.train_batch_size * run_args.gradient_accumulation_steps * max(run_args.world_size, 1)
    total = run_args.max_steps if run_args.max_steps > 0 else math.ceil(run_args.num_train_epochs * math.ceil(n_train / per_step))
    probe_steps = max(1, round(total * transfer.lp_fraction))
    probe, tune = copy.copy(run_args), copy.copy(run_args)
    probe.max_steps, tune.max_steps = probe_steps, max(1, total - probe_steps)
    probe.learning_rate = transfer.lp_learning_rate or 10 * run_args.learning_rate
    probe.save_strategy = SaveStrategy.NO  # checkpoints come from the fine-tuning stage
    return [probe, tune]


def fit(setup: TransferSetup, transfer: Any, run_args: Any, resume: str | None = None) -> Fit:
    """Build, adapt (each stage of --strategy), train and score one classifier with `run_args.seed`."""
    set_seed(run_args.seed)  # the fresh head is drawn here, before the Trainer seeds anything
    model, fresh = setup.build()
    layout = find_layout(model, fresh)
    full_count = count_parameters(model)[1]
    stages = STRATEGIES[transfer.strategy]
    if resume and len(stages) > 1:
        raise ValueError("--resume_from_checkpoint is not supported with --strategy lp_ft; start the run again.")
    weights = balanced_class_weights(setup.train_labels, len(setup.label_names)) if transfer.class_weights == "balanced" else None
    log_history, trainable, train_metrics, offset = [], [], {}, 0
    for stage, stage_args in zip(stages, _stage_arguments(run_args, transfer, len(stages), len(setup.train_dataset))):
        model = stage(model, transfer, layout)  # a strategy that cannot apply raises here, before anything is written
        trainable.append(count_parameters(model)[0])
        logger.info("Stage %s: %s of %s parameters trainable", stage.__name__, f"{trainable[-1]:,}", f"{full_count:,}")
        trainer = TransferTrainer(
            model=model,
            args=stage_args,
            train_dataset=setup.train_dataset,
            eval_dataset=setup.eval_dataset,
            data_collator=setup.collator,
            processing_class=setup.processing_class,
            compute_metrics=classification_metrics(setup.label_names),
            layout=layout,
            class_weights=weights,
            l2sp=L2SP(model, layout, transfer.l2sp_alpha, fresh) if transfer.l2sp_alpha else None,
            layer_decay=transfer.layer_decay,
        )
        result = trainer.train(resume_from_checkpoint=resume)
        tag = {"stage": stage.__name__} if len(stages) > 1 else {}
        log_history += [{**entry, "step": entry.get("step", 0) + offset, **tag} for entry in trainer.state.log_history]
        offset += trainer.state.global_step  # the next stage counts on from this one's last step, logged or not
        train_metrics = {
            k: train_metrics.get(k, 0) + v if k in ("train_runtime", "total_flos") else v for k, v in result.metrics.items()
        }
        train_metrics["train_steps"] = offset  # every stage's (the dict above keeps only the last stage's other keys)
    train_metrics["train_samples"] = len(setup.train_dataset)
    parameters = {"trainable": trainable[-1], "full": full_count}
    if len(stages) > 1:
        parameters.update({f"trainable_in_{s.__name__}": n for s, n in zip(stages, trainable)})
    scores, predictions = _score(trainer, setup)
    return Fit(trainer, layout, scores, train_metrics, parameters, log_history, predictions)


def _score(trainer: TransferTrainer, setup: TransferSetup) -> tuple[dict[str, Any], np.ndarray]:
    """eval_* scores of the held-out set (the Trainer's loss, the shipped metric module's report, the majority
    baseline) and the predicted classes behind them.

    Scored in full precision, as the saved model runs in `pipeline()`: accelerate's mixed-precision (autocast)
    forward is taken off the model first, so bf16 training never makes the reported predictions differ.
    """
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    prediction = trainer.predict(setup.eval_dataset, metric_key_prefix="eval")
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = logits.argmax(-1)
    report = load_metric().compute(predictions=predicted, references=prediction.label_ids, label_names=setup.label_names)
    return {
        **{k: v for k, v in prediction.metrics.items() if k in ("eval_loss", "eval_runtime", "eval_samples_per_second")},
        **{f"eval_{k}": v for k, v in scalar_scores(report).items()},
        "eval_majority_accuracy": majority_accuracy(setup.train_labels, setup.eval_labels),
        "eval_samples": len(setup.eval_labels),
        "eval_per_class": report["per_class"],
        "eval_confusion_matrix": report["confusion_matrix"],
    }, predicted


def run_transfer(setup: TransferSetup, transfer: Any, run_args: Any, resume: str | None = None) -> Fit:
    """`fit` once, or once per --seeds (the first seed's model is kept; the others are trained in a scratch dir);
    then the classic baseline and, with --controls scratch, the from-scratch control on the same split."""
    seeds = transfer.seed_list() or [run_args.seed]
    first_args = copy.copy(run_args)
    first_args.seed = seeds[0]
    first = fit(setup, transfer, first_args, resume)
    runs = [first.eval_results, *_repeat(setup, transfer, run_args, seeds[1:])]
    if setup.baseline is not None and fits_baseline(transfer.baseline, setup.train_labels):
        classic = setup.baseline()
        first.baseline = classic["name"]
        first.eval_results.update(eval_baseline_accuracy=classic["accuracy"], eval_baseline_f1_macro=classic["f1_macro"])
        logger.info("Classic baseline on the same split, %s: accuracy %.3f", classic["name"], classic["accuracy"])
    if "scratch" in transfer.control_list() and setup.build_scratch is not None:
        control = copy.copy(transfer)  # the control arm trains everything: a frozen random backbone would prove nothing
        control.strategy, control.freeze_layers, control.merge_lora, control.l2sp_alpha = "full", None, False, 0.0
        control_args = copy.copy(run_args)
        control_args.learning_rate = setup.scratch_learning_rate or run_args.learning_rate
        logger.info(
            "Control: the same architecture from random weights, full fine-tuning at lr %g, seeds %s",
            control_args.learning_rate,
            seeds,
        )
        scores = np.array(
            [r["eval_accuracy"] for r in _repeat(replace(setup, build=setup.build_scratch), control, control_args, seeds)]
        )
        first.eval_results["eval_scratch_accuracy"] = float(scores.mean())
        if len(scores) > 1:
            first.eval_results["eval_scratch_accuracy_std"] = float(scores.std(ddof=1))
    if len(seeds) > 1:
        keys = ("eval_accuracy", "eval_f1_macro", "eval_precision_macro", "eval_recall_macro")
        first.seed_results = {"seeds": seeds, "per_seed": [{"seed": s, **{k: r[k] for k in keys}} for s, r in zip(seeds, runs)]}
        for key in keys:
            values = np.array([r[key] for r in runs])
            first.seed_results[f"{key}_mean"], first.seed_results[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1))
    return first


def _repeat(setup: TransferSetup, transfer: Any, run_args: Any, seeds: list[int]) -> list[dict[str, Any]]:
    """The held-out scores of one run per seed, each trained in a scratch directory that is removed after."""
    results = []
    for seed in seeds:
        logger.info("Run with seed %d (%d of %d)", seed, len(results) + 1, len(seeds))
        scratch = tempfile.mkdtemp(prefix=f"hfssl-seed{seed}-")
        args = copy.copy(run_args)
        args.seed, args.output_dir, args.save_strategy = seed, scratch, SaveStrategy.NO
        try:
            results.append(fit(setup, transfer, args).eval_results)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def transfer_record(
    recipe: str,
    fit_: Fit,
    description: str,
    model_path: str | None,
    from_scratch: bool,
    options: dict[str, Any],
    label_names: list[str],
) -> dict[str, Any]:
    """The hfssl.json of a transfer run: lineage (with the pretraining stages before it), options, scores."""
    starts_from = None if from_scratch else model_path
    lineage = dict(
        recipe=recipe,
        strategy=options["transfer"]["strategy"],
        data=description,
        base_model=starts_from,
        architecture_of=model_path if from_scratch else None,
        parent=parent_lineage(starts_from),
    )
    metrics = {
        **fit_.train_metrics,
        **{k: v for k, v in fit_.eval_results.items() if not isinstance(v, (dict, list))},
        **{f"{k}_parameters": v for k, v in fit_.parameters.items()},
    }
    return run_record(
        recipe,
        lineage,
        options,
        metrics,
        labels=label_names,
        per_class=fit_.eval_results["eval_per_class"],
        seed_results=fit_.seed_results or None,
        lora_base_model="." if options["transfer"]["strategy"] == "lora" else None,
        baseline=fit_.baseline,
        verdict=verdict({**fit_.eval_results, **(fit_.seed_results or {})}, fit_.baseline),
    )


def _write_lora_base(model: nn.Module, processing_class: Any, staging: Path, merge: bool) -> None:
    """The adapter's base next to it (the frozen weights with this task's labels and trained head) and, with
    --merge_lora, merged/ (a plain model with the adapters folded in).

    With config.json in the output, `AutoModelFor*.from_pretrained(out)` and `pipeline(model=out)` load the base
    from the output itself and apply the adapter, and so does the pushed repo once its adapter_config.json names
    it (hfssl.hub does that at push): the output resolves from itself alone, with this task's labels.
    """
    copy.deepcopy(model).unload().save_pretrained(staging)
    if merge:
        copy.deepcopy(model).merge_and_unload().save_pretrained(staging / "merged")
        processing_class.save_pretrained(staging / "merged")


def transfer_files(fit_: Fit, setup: TransferSetup, transfer: Any, record: dict[str, Any]) -> Callable[[Path], None]:
    """What a transfer output holds beside the model: eval_results.json, seed results, the confusion matrix and,
    for LoRA, the adapter's base (hfssl.runs.finish_run calls the returned function on the staging folder)."""
    model = fit_.model
    if transfer.strategy == "lora":  # the adapter names its base where it will be: this output (the repo, once pushed)
        model.peft_config["default"].base_model_name_or_path = str(Path(fit_.trainer.args.output_dir).resolve())

    def write(staging: Path) -> None:
        write_json(
            staging / "eval_results.json",
            {**fit_.eval_results, **{k: v for k, v in fit_.seed_results.items() if k.endswith(("_mean", "_std"))}},
        )
        if fit_.seed_results:
            write_json(staging / "seed_results.json", fit_.seed_results)
        save_confusion_matrix(
            fit_.eval_results["eval_confusion_matrix"],
            setup.label_names,
            staging / "confusion_matrix.png",
            f"{record['recipe']} ({transfer.strategy}): accuracy {fit_.eval_results['eval_accuracy']:.3f}",
        )
        if transfer.strategy == "lora":
            _write_lora_base(model, setup.processing_class, staging, transfer.merge_lora)

    return write


def summary_text(recipe: str, fit_: Fit, output_dir: str) -> str:
    """The final human summary: scores against the majority baseline, and what was trained."""
    r, p = fit_.eval_results, fit_.parameters
    lines = [
        f"hfssl {recipe}: accuracy {r['eval_accuracy']:.3f}, macro-F1 {r['eval_f1_macro']:.3f} on {r['eval_samples']} "
        f"held-out examples (majority-class baseline {r['eval_majority_accuracy']:.3f})"
    ]
    if fit_.seed_results:
        s = fit_.seed_results
        lines.append(
            f"  over seeds {','.join(map(str, s['seeds']))}: accuracy {s['eval_accuracy_mean']:.3f} +- "
            f"{s['eval_accuracy_std']:.3f}, macro-F1 {s['eval_f1_macro_mean']:.3f} +- {s['eval_f1_macro_std']:.3f}"
        )
    lines.append(
        f"  trainable parameters: {p['trainable']:,} of {p['full']:,} ({p['trainable'] / p['full']:.2%}); "
        f"full fine-tuning trains {p['full']:,}"
    )
    judged = verdict({**r, **{k: v for k, v in fit_.seed_results.items() if k.startswith("eval_accuracy_")}}, fit_.baseline)
    if judged:
        lines.append(f"  {judged}")
    lines.append(f"  trained in {fit_.train_metrics.get('train_runtime', 0):.0f} s on {hardware_name()}\nSaved to {output_dir}")
    return "\n".join(lines)
