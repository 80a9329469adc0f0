"""Masked-token pretext: the collator, the sparse MLM head, and the Trainer that uses them.

Masking is transformers' `DataCollatorForLanguageModeling` (labels -100 on unmasked tokens).
What is added here, because no library does it for stock models: running the MLM head and its
loss only at the masked positions. With a BERT-sized vocabulary the dense head
(batch x seq x vocab logits) is most of a small model's compute, and ~85% of it is discarded
by the loss. The model's own head module is reused unchanged: a forward pre-hook hands it the
hidden states of the masked positions only, so the saved model is the stock one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.data_loader import prepare_data_loader
from torch import nn
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, EvalPrediction, PreTrainedModel, TrainerCallback

from hfssl.args import MaskingArguments
from hfssl.data.text import is_split_by_process
from hfssl.precision import MasterWeightsMixin, with_master_weights
from hfssl.runs import TimedTrainer

__all__ = [
    "FRESH_HEAD_LR",
    "MODEL_DEFAULTS",
    "PLATEAU_FIX",
    "PlateauWatch",
    "MaskedLMTrainer",
    "PadForMasking",
    "build_masker",
    "fill_mask_examples",
    "masked_lm_metrics",
    "masked_token_nll",
    "plateau_report",
    "plateau_sentence",
    "unigram_loss",
    "mlm_head_module",
    "sparse_head",
]

logger = logging.getLogger(__name__)

# The first module of each architecture's MLM head; everything after it is position-wise.
_HEAD_MODULES = {
    "bert": "cls",
    "roberta": "lm_head",
    "xlm-roberta": "lm_head",
    "camembert": "lm_head",
    "deberta": "cls",
    "deberta-v2": "cls",
    "distilbert": "vocab_transform",
    "electra": "generator_predictions",
    "modernbert": "head",
    "megatron-bert": "cls",
    "mpnet": "lm_head",
    "albert": "predictions",
}


def build_masker(tokenizer: Any, masking: MaskingArguments, seed: int = 42) -> DataCollatorForLanguageModeling:
    """transformers' MLM collator with hfssl's options; MaskedLMTrainer calls its `torch_mask_tokens`.

    Whole-word spans come from the data (see data/text.py). The masker has its own generator,
    saved in every checkpoint, and masks are drawn when a batch is consumed by a training step
    rather than when the data loader collates it (accelerate's loader fetches one batch ahead):
    so a resumed run masks exactly as an uninterrupted one.
    """
    return DataCollatorForLanguageModeling(
        tokenizer=tokenizer,
        mlm_probability=masking.mlm_probability,
        mask_replace_prob=masking.mask_replace_prob,
        random_replace_prob=masking.random_replace_prob,
        whole_word_mask=masking.whole_word_mask,
        seed=seed,
    )


@dataclass
class PadForMasking:
    """Batch examples for later masking: pads input_ids, attention/special-token masks and word spans.

    Hand-written because transformers' padding does not know `offset_mapping` (the word spans).
    """

    tokenizer: Any
    pad_to_multiple_of: int = 8

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(ex["input_ids"]) for ex in examples)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fill = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            if key not in fill:
                continue
            rows = [list(ex[key]) + [fill[key]] * (width - len(ex[key])) for ex in examples]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if longest != width or any(len(ex["input_ids"]) != longest for ex in examples):
            batch["attention_mask"] = torch.tensor(
                [[1] * len(ex["input_ids"]) + [0] * (width - len(ex["input_ids"])) for ex in examples], dtype=torch.long
            )
        elif "attention_mask" in batch and bool(batch["attention_mask"].all()):
            # Packed blocks have no padding: without a mask, the model attends everywhere anyway, and
            # SDPA takes its mask-free kernels. On CPU the masked flash backward was measured at
            # 60 ms per layer against ~15 ms without a mask (4-layer BERT, h512, batch 32 x 128).
            del batch["attention_mask"]
        return batch


def mlm_head_module(model: PreTrainedModel) -> nn.Module | None:
    """The module where the MLM head starts, or None when hfssl does not know this architecture."""
    name = _HEAD_MODULES.get(getattr(model.config, "model_type", ""))
    return getattr(model, name, None) if name else None


def head_parameters(model: PreTrainedModel) -> list[nn.Parameter]:
    """The MLM head's own parameters: those outside the encoder (`model.base_model`); a tied decoder is the encoder's.

    Raises ValueError when the model has no separate head (nothing outside its base model).
    """
    encoder = {id(p) for p in model.base_model.parameters()} if model.base_model is not model else set()
    head = [p for p in model.parameters() if id(p) not in encoder]
    if not encoder or not head:
        raise ValueError(
            f"--head_learning_rate: {type(model).__name__} has no MLM head separate from its encoder; leave it unset."
        )
    return head


@contextlib.contextmanager
def sparse_head(model: PreTrainedModel, selected: torch.Tensor) -> Iterator[bool]:
    """Within the block, the MLM head sees hidden[selected] (N, hidden) and returns (N, vocab) logits.

    Yields whether the sparse path is active (False for an unknown architecture: dense logits).
    """
    head = mlm_head_module(model)
    if head is None:
        yield False
        return

    def gather(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # (batch, seq, hidden)
        return (hidden[selected],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield True
    finally:
        handle.remove()


class _MaskedTokenNLL(torch.autograd.Function):
    """Per-token cross-entropy of (N, vocab) logits, in fp32 precision whatever the logits' dtype.

    `F.cross_entropy(logits.float(), targets)` makes an fp32 copy of every logit, a log-softmax of
    the same size, a zero-filled gradient for nll_loss and another for log_softmax, then casts the
    gradient back: four vocab-sized passes over memory, 110 ms of a 600 ms step (4-layer BERT, hidden
    512, 30,522 tokens, 2-core CPU). Here the logits are read in row chunks that fit in cache: the
    forward keeps only the log-sum-exp per row, and the backward writes softmax - one-hot straight
    into a gradient of the logits' own dtype. Hand-written: PyTorch has no such fused loss on CPU.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # CPU: ~4 MB of fp32 per chunk, to stay in cache. GPU: 256 MB, so a step launches only a few chunks' kernels.
        per_chunk = (1 << 20) if logits.device.type == "cpu" else (1 << 26)
        rows = max(1, per_chunk // max(1, logits.shape[-1]))
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], rows):
            lse[i : i + rows] = torch.logsumexp(logits[i : i + rows].float(), dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows = rows
        return lse - logits.gather(1, targets[:, None]).squeeze(1).float()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        out = torch.empty_like(logits)
        rows = ctx.rows
        for i in range(0, logits.shape[0], rows):
            part = slice(i, i + rows)
            probs = torch.exp(logits[part].float() - lse[part, None])
            probs.scatter_add_(1, targets[part, None], probs.new_full((probs.shape[0], 1), -1.0))
            out[part] = probs.mul_(grad[part, None].float())
        return out, None


def masked_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 negative log-likelihoods of `targets` under (N, vocab) logits; equals
    `F.cross_entropy(logits.float(), targets, reduction="none")` and its gradient, with far less memory traffic."""
    return _MaskedTokenNLL.apply(logits, targets)


class MaskedLMTrainer(MasterWeightsMixin, TimedTrainer):
    """A Trainer whose loss is cross-entropy over masked tokens, computed sparsely when possible.

    The loss equals the model's own dense loss (mean over tokens with label != -100); with
    gradient accumulation it is normalised by the masked tokens of the whole accumulated batch.
    Masks come from the masker's own generator at step time, saved with each checkpoint; evaluation always
    uses the same fixed masks, so eval losses are comparable across steps and runs.
    """

    def __init__(
        self,
        *args: Any,
        masker: DataCollatorForLanguageModeling,
        sparse: bool = True,
        head_learning_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("data_collator", PadForMasking(masker.tokenizer))
        super().__init__(*args, **kwargs)
        self.masker = masker
        self.sparse = sparse
        self.head_learning_rate = head_learning_rate
        ds_config = getattr(getattr(self.args, "hf_deepspeed_config", None), "config", None) or {}
        if (
            head_learning_rate is not None and "optimizer" in ds_config
        ):  # DeepSpeed then builds the optimizer, not create_optimizer
            raise ValueError(
                "--head_learning_rate cannot apply when the DeepSpeed config defines its own optimizer; "
                "remove the config's 'optimizer' section or leave --head_learning_rate unset."
            )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer; with `head_learning_rate`, the head's own weights move to groups with that lr.

        Built before the scheduler, so the warmup and decay scale every group's own peak lr. Written here
        because the Trainer has one lr for all parameters.
        """
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.head_learning_rate is not None:
            head = {id(p) for p in head_parameters(self.model if model is None else model)}
            for group in list(optimizer.param_groups):
                moved = [p for p in group["params"] if id(p) in head]
                if moved:
                    group["params"] = [p for p in group["params"] if id(p) not in head]
                    optimizer.add_param_group(
                        {
                            **{k: v for k, v in group.items() if k != "params"},
                            "params": moved,
                            "lr": self.head_learning_rate,
                            "initial_lr": self.head_learning_rate,
                        }
                    )
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return with_master_weights(self, optimizer, model)

    def get_train_dataloader(self) -> DataLoader:
        """Each process reads its own part of a training stream (tokenize_and_pack cut it before tokenizing).

        accelerate's default for a stream is to read it on the main process alone and hand its batches to the
        others (`dispatch_batches`), which would train on the main process's part only; without dispatching, it
        would keep every W-th batch of each process's part. Map-style data keeps the Trainer's sampler."""
        if not is_split_by_process(self.train_dataset):
            return super().get_train_dataloader()
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self._get_collator_with_removed_columns(self.data_collator, description="training"),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return prepare_data_loader(
            loader, self.args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
        )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys(self._signature_columns + ["special_tokens_mask", "offset_mapping"]))

    def _masking_rng(self) -> torch.Generator:
        masker = self.masker
        if not isinstance(masker.generator, torch.Generator) or masker._generator_pid != os.getpid():
            masker.generator = torch.Generator().manual_seed(masker.seed + self.args.process_index)
            masker._generator_pid = os.getpid()
        return masker.generator

    def _mask(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Draw this batch's masks now, in step order: (B, T) input_ids -> masked input_ids and labels."""
        if "labels" in batch:
            return batch
        self._masking_rng()
        device = batch["input_ids"].device
        special = batch.pop("special_tokens_mask").cpu()
        offsets = batch.pop("offset_mapping", None)
        ids, labels = self.masker.torch_mask_tokens(
            batch["input_ids"].cpu().clone(),
            special_tokens_mask=special,
            offset_mapping=None if offsets is None else offsets.cpu(),
        )
        batch["input_ids"], batch["labels"] = ids.to(device), labels.to(device)
        return batch

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(self._mask(next(epoch_iterator)))
            except StopIteration:
                break
        return batches, self._get_num_items_in_batch(batches, device)

    def _rng_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"masking_rng_{self.args.process_index}.pt")

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save(self._masking_rng().get_state(), self._rng_file(output_dir))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str) and os.path.isfile(self._rng_file(resume_from_checkpoint)):
            self._masking_rng().set_state(torch.load(self._rng_file(resume_from_checkpoint), weights_only=True))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _masked_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, vocab) logits and (N,) targets at the masked positions of `inputs`."""
        labels = inputs.pop("labels")
        selected = labels != -100
        ctx = sparse_head(self.accelerator.unwrap_model(model), selected) if self.sparse else contextlib.nullcontext(False)
        with ctx as is_sparse:
            logits = model(**inputs).logits
        if not is_sparse:
            logits = logits[selected]
        return logits, labels[selected]

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        logits, targets = self._masked_logits(model, dict(inputs))
        loss = self._masked_token_loss(masked_token_nll(logits, targets), num_items_in_batch)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _masked_token_loss(self, nll: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
        """The mean of the (N,) masked-token losses; over the whole accumulated batch when the Trainer counted it."""
        if num_items_in_batch is None:
            self.loss_is_scaled_for_ga = False
            return nll.mean()
        self.loss_is_scaled_for_ga = True
        loss = nll.sum() / num_items_in_batch
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return loss

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Loss plus, per masked token, (predicted id, negative log-likelihood): no vocab-sized tensor is kept."""
        inputs = self._mask(self._prepare_inputs(inputs))
        with torch.no_grad(), self.compute_loss_context_manager():
            logits, targets = self._masked_logits(model, dict(inputs))
            nll = masked_token_nll(logits, targets)
        loss = nll.mean().detach()
        if prediction_loss_only:
            return loss, None, None
        preds = torch.stack([logits.argmax(-1).float(), nll], dim=-1)  # (N, 2)
        # One row per batch, (1, N, 2) and (1, N): processes hold different N, and the Trainer pads
        # along dim 1 with -100 before gathering them (along dim 0 the shapes would not match).
        return loss, preds[None], targets[None]

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        rng = self._masking_rng()
        training_state = rng.get_state()
        rng.manual_seed(self.args.seed + 1_000_003)  # the same eval masks every time
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            rng.set_state(training_state)


def masked_lm_metrics(pred: EvalPrediction) -> dict[str, float]:
    """Token-weighted MLM loss, perplexity and masked-token accuracy over the whole eval set."""
    preds = np.asarray(pred.predictions).reshape(-1, 2)
    targets = np.asarray(pred.label_ids).reshape(-1)
    keep = targets != -100  # padding added when batches and processes are gathered
    preds, targets = preds[keep], targets[keep]
    if len(targets) == 0:
        return {}
    mlm_loss = float(preds[:, 1].mean())
    return {
        "mlm_loss": mlm_loss,
        "perplexity": float(np.exp(min(mlm_loss, 50.0))),
        "masked_accuracy": float((preds[:, 0].astype(np.int64) == targets).mean()),
    }


def fill_mask_examples(model_dir: str, texts: Any, text_column: str, n: int = 3) -> list[tuple[str, str]]:
    """Mask one mid-sentence word in `n` held-out texts and show the saved model's top-3 guesses."""
    from transformers import pipeline

    fill = pipeline("fill-mask", model=model_dir, device="cpu")
    mask = fill.tokenizer.mask_token
    examples = []
    for row in texts.take(50):
        words = row[text_column].split()[:24]
        candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 3 and i > 2]
        if not candidates:
            continue
        i = candidates[len(candidates) // 2]
        masked = " ".join(words[:i] + [mask] + words[i + 1 :])
        guesses = fill(masked, top_k=3)
        examples.append((masked, f"{', '.join(g['token_str'].strip() for g in guesses)}   (truth: {words[i]})"))
        if len(examples) == n:
            break
    return examples


def unigram_loss(blocks: Any, vocab_size: int, special_ids: Sequence[int], max_tokens: int = 2_000_000) -> float | None:
    """The masked-token loss of a model that knows only token frequencies: the corpus's unigram entropy, in nats.

    A masked position holds a maskable (non-special) token drawn as the corpus draws it, so predicting the
    frequencies alone scores exactly this cross-entropy. Pretraining that ends near it has learned word counts,
    not words: the "unigram plateau" every small MLM sits on before it learns to use context. Counted over the
    first `max_tokens` tokens of `blocks` (a Dataset or IterableDataset with `input_ids`); None without tokens.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    special = np.asarray(sorted(special_ids), dtype=np.int64)
    for batch in blocks.iter(batch_size=1024):
        ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in batch["input_ids"]] or [np.zeros(0, np.int64)])
        counts += np.bincount(ids[~np.isin(ids, special)], minlength=vocab_size)[:vocab_size]
        if counts.sum() >= max_tokens:
            break
    if counts.sum() == 0:
        return None
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# Defaults that depend on where pretraining starts, chosen on validation splits (docs/benchmarks.md): a small encoder
# from scratch leaves the unigram plateau soonest with a high rate and more masking (WordNet glosses, tiny preset:
# lr 2e-3, 30% masking, 128 x 64-token blocks; eval MLM loss 4.15 after 3,000 steps on an unseen 34k-document corpus,
# where lr 1e-3 and 15% stayed on the plateau); continued pretraining of a trained checkpoint keeps BERT's 15% and
# a small rate that does not undo it (all-MiniLM-L6-v2 DAPT: lr 2e-5 of 2e-5 / 1e-4 tried, 64 x 64-token blocks).
MODEL_DEFAULTS = {
    "scratch": dict(learning_rate=2e-3, mlm_probability=0.3, per_device_train_batch_size=128),
    "checkpoint": dict(learning_rate=2e-5, mlm_probability=0.15, per_device_train_batch_size=64),
}


FRESH_HEAD_LR = 1e-3  # continued pretraining of a checkpoint without an MLM head: the fresh head's learning rate

# Pretraining "left the plateau" when its held-out loss is this fraction below the unigram loss. A model that has
# learned nothing but frequencies ends within a few percent of it; one that uses context falls well below.
PLATEAU_MARGIN = 0.1


def plateau_report(eval_loss: float | None, unigram: float | None) -> dict[str, Any]:
    """Where pretraining stands against the unigram plateau: the facts for hfssl.json, the summary and the card."""
    if eval_loss is None or unigram is None:
        return {}
    left = eval_loss < unigram * (1 - PLATEAU_MARGIN)
    return {"unigram_loss": unigram, "left_unigram_plateau": bool(left)}


PLATEAU_FIX = (
    "train longer (more --max_steps or a longer --time_budget), raise --learning_rate (2e-3 suits the tiny and mini "
    "presets), or pretrain a smaller model (--model_preset tiny)"
)


class PlateauWatch(TrainerCallback):
    """Logs, at every evaluation, the held-out MLM loss beside the unigram plateau, so a run stuck on it shows early."""

    def __init__(self, unigram: float) -> None:
        self.unigram = unigram
        self._logged_step = -1

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        loss = (metrics or {}).get("eval_mlm_loss")
        if loss is not None and state.is_world_process_zero and state.global_step != self._logged_step:
            self._logged_step = state.global_step
            where = "below it" if loss < self.unigram * (1 - PLATEAU_MARGIN) else "still on it"
            logger.info("step %d: eval MLM loss %.3f; unigram plateau %.3f (%s)", state.global_step, loss, self.unigram, where)


def plateau_sentence(metrics: dict[str, Any], whose: str = "") -> str | None:
    """One sentence on the unigram plateau, or None when it was not measured; `whose` names the model that predicts
    the masked tokens when it is not the one saved (" of the generator": ELECTRA)."""
    if "left_unigram_plateau" not in metrics:
        return None
    loss, unigram = metrics.get("eval_mlm_loss"), metrics["unigram_loss"]
    if metrics["left_unigram_plateau"]:
        return (
            f"left the unigram plateau: eval MLM loss{whose} {loss:.2f} against {unigram:.2f} for a model that knows only "
            "token frequencies"
        )
    return (
        f"did NOT leave the unigram plateau: eval MLM loss{whose} {loss:.2f} against {unigram:.2f} for a model that knows "
        f"only token frequencies, so its features carry little beyond word counts. To fix it: {PLATEAU_FIX}"
    )
