"""Replaced-token detection (ELECTRA, Clark et al. 2020): a small generator and the encoder trained jointly.

A fraction of the tokens is masked (15% by default); the generator, a masked LM with a third of the encoder's
layers, predicts them (MLM loss); each masked position is then filled with a token sampled from the generator's
softmax, and the encoder, the discriminator, tells every non-padding token original or replaced (binary
cross-entropy). The loss is `mlm + 50 x rtd`, the paper's lambda. On equal compute this trains a better encoder
than masked-token prediction alone: the discriminator learns from every token, not from the 15% that were masked.

Both models are transformers' own (`AutoModelForMaskedLM`, `AutoModelForTokenClassification` with one label, built
in hfssl.models), sharing their embedding module as ELECTRA does. Written here, because no library does it for stock
models: the corruption (sampling and replacing), the RTD loss, and the Trainer around them, which reuses
MaskedLMTrainer's masking, sparse MLM head, chunked loss, bf16 weights and budget. The saved model is the
discriminator's encoder alone, as the stock base model of its family (`ModernBertModel`, `BertModel`, ...).
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction, PreTrainedModel
from transformers.utils import ModelOutput

from hfssl.pretext.masked_tokens import MaskedLMTrainer, masked_lm_metrics, masked_token_nll, sparse_head

__all__ = [
    "DISCRIMINATOR_WEIGHT",
    "ELECTRA_DEFAULTS",
    "ReplacedTokenDetection",
    "ReplacedTokenTrainer",
    "replace_tokens",
    "replaced_token_loss",
    "replaced_token_metrics",
    "sample_tokens",
]

DISCRIMINATOR_WEIGHT = 50.0  # lambda in loss = MLM + lambda x RTD (Clark et al. 2020, section 3)
# Applied where the user set nothing, over the mlm recipe's MODEL_DEFAULTS: ELECTRA masks BERT's 15% (the recipe's
# from-scratch default is 30%). From a checkpoint the generator (and the 1-logit head) start random while the encoder
# keeps the checkpoint's small rate, so they get their own, as a fresh MLM head does (--head_learning_rate).
ELECTRA_DEFAULTS = {
    "scratch": dict(mlm_probability=0.15),
    "checkpoint": dict(mlm_probability=0.15, head_learning_rate=1e-3),
}


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, vocab) logits -> (N,) token ids drawn from their softmax, in fp32 and without gradient.

    Inverse-CDF sampling (a cumulative sum and a binary search per row): on a 2-core CPU it took 90 ms for
    1,229 x 8,192 logits where torch.multinomial took 310 ms.
    """
    with torch.no_grad():
        x = logits.float()
        weights = (x - x.amax(-1, keepdim=True)).exp_()  # a new tensor: the logits are left as they are
        cdf = weights.cumsum_(-1)
        u = torch.rand(len(cdf), 1, generator=generator, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, side="right").squeeze(-1).clamp_max_(cdf.shape[-1] - 1)


def replace_tokens(
    original: torch.Tensor, masked: torch.Tensor, sampled: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's input and labels: (B, T) ids, (B, T) bool masked, (N,) samples for the masked positions
    (row-major order) -> (B, T) corrupted ids and (B, T) labels: 1 replaced, 0 original, -100 padding.

    A sampled token equal to the original counts as original, as in ELECTRA.
    """
    corrupted = original.masked_scatter(masked, sampled)
    labels = (corrupted != original).long()
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, -100)
    return corrupted, labels


def replaced_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy (fp32) of (B, T) replaced-token logits over the tokens labeled 0 or 1."""
    keep = labels != -100
    return F.binary_cross_entropy_with_logits(logits[keep].float(), labels[keep].float())


@dataclass
class ReplacedTokenOutput(ModelOutput):
    """mlm_logits (N, vocab) and mlm_targets (N,) at the masked positions; rtd_logits and rtd_labels (B, T)."""

    mlm_logits: torch.Tensor | None = None
    mlm_targets: torch.Tensor | None = None
    rtd_logits: torch.Tensor | None = None
    rtd_labels: torch.Tensor | None = None


class ReplacedTokenDetection(nn.Module):
    """ELECTRA's generator and discriminator as one module (the Trainer's model, so DDP and checkpoints see both).

    The generator's embedding module is the discriminator's (token embeddings, and where the family has them
    position and token-type embeddings and their norm: ELECTRA shares token and positional embeddings), and its MLM
    decoder stays tied to the token embeddings, so one matrix serves all three.
    """

    accepts_loss_kwargs = True  # the Trainer counts the masked tokens of an accumulated batch (num_items_in_batch)
    main_input_name = "input_ids"

    def __init__(self, generator: PreTrainedModel, discriminator: PreTrainedModel) -> None:
        super().__init__()
        shared = getattr(discriminator.base_model, "embeddings", None)
        if shared is None or not hasattr(generator.base_model, "embeddings"):
            raise ValueError(
                f"--objective electra: {type(discriminator).__name__} has no embedding module to share with the "
                "generator. Use a BERT-like encoder (ModernBERT, BERT, RoBERTa, ELECTRA, ...), or --objective mlm."
            )
        generator.base_model.embeddings = shared
        generator.tie_weights()  # the decoder follows the shared token embeddings
        self.generator = generator
        self.discriminator = discriminator

    @property
    def base_model(self) -> PreTrainedModel:
        """The encoder that is saved (the discriminator's): everything else, the generator and the 1-logit head, is
        what --head_learning_rate trains at its own rate (hfssl.pretext.masked_tokens.head_parameters)."""
        return self.discriminator.base_model

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        sampler: torch.Generator | None = None,
        sparse: bool = True,
    ) -> ReplacedTokenOutput:
        """(B, T) masked input_ids and MLM labels (-100 where not masked) -> the generator's and discriminator's outputs."""
        extra = {k: v for k, v in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)) if v is not None}
        masked = labels != -100
        with sparse_head(self.generator, masked) if sparse else contextlib.nullcontext(False) as is_sparse:
            logits = self.generator(input_ids=input_ids, **extra).logits
        if not is_sparse:
            logits = logits[masked]
        original = torch.where(masked, labels, input_ids)
        corrupted, rtd_labels = replace_tokens(original, masked, sample_tokens(logits, sampler), attention_mask)
        rtd_logits = self.discriminator(input_ids=corrupted, **extra).logits.squeeze(-1)
        return ReplacedTokenOutput(mlm_logits=logits, mlm_targets=labels[masked], rtd_logits=rtd_logits, rtd_labels=rtd_labels)

    def record_facts(self) -> dict[str, Any]:
        """What hfssl.json and the card say about the pretext beyond the options."""
        return dict(generator_layers=self.generator.config.num_hidden_layers, discriminator_weight=DISCRIMINATOR_WEIGHT)

    def save_discriminator(self, output_dir: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The discriminator's encoder as the stock base model of its family, without the RTD head or the generator.

        `state_dict` is the whole module's, as the Trainer gathers it under FSDP or DeepSpeed ZeRO-3. The config
        leaves the RTD head's single label behind, so a classifier loaded from it gets the usual fresh head.
        """
        encoder = self.discriminator.base_model
        prefix = f"discriminator.{self.discriminator.base_model_prefix}."
        weights = None if state_dict is None else {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if weights is not None and not weights:  # a gathered state dict must never be swapped for the local one
            raise RuntimeError(f"No discriminator weights (keys starting with {prefix!r}) in the state dict to save.")
        own = encoder.config
        saved = copy.deepcopy(own)
        saved.num_labels = 2  # the config default: no trace of the 1-logit RTD head
        encoder.config = saved
        try:
            encoder.save_pretrained(output_dir, state_dict=weights)
        finally:
            encoder.config = own


class ReplacedTokenTrainer(MaskedLMTrainer):
    """MaskedLMTrainer (masks at step time, fixed eval masks, sparse head, bf16 weights, budget) for ELECTRA.

    The loss is the generator's masked-token loss plus DISCRIMINATOR_WEIGHT x the replaced-token loss; training
    logs also show the two parts (`mlm_loss`, `rtd_loss`, averaged since the last log). Samples come from a
    generator of their own, on the model's device, saved in every checkpoint beside the masking one, and reseeded
    for evaluation, so evaluations are comparable and a resumed run samples as an uninterrupted one. Checkpoints
    hold both models (for resuming); the final save writes the discriminator's encoder.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sampler: torch.Generator | None = None
        self._parts: dict[str, torch.Tensor] = {}  # the training losses' sums since the last log
        self._parts_steps = 0

    def _sampling_rng(self) -> torch.Generator:
        if self._sampler is None:
            self._sampler = torch.Generator(device=self.args.device).manual_seed(self.args.seed + 7919 + self.args.process_index)
        return self._sampler

    def _forward(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[ReplacedTokenOutput, torch.Tensor, torch.Tensor]:
        """The joint model's outputs, (N,) masked-token losses and the mean replaced-token loss."""
        out = model(**inputs, sampler=self._sampling_rng(), sparse=self.sparse)
        return out, masked_token_nll(out.mlm_logits, out.mlm_targets), replaced_token_loss(out.rtd_logits, out.rtd_labels)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        out, nll, rtd = self._forward(model, inputs)
        if model.training:
            for name, part in (("mlm_loss", nll.detach().mean()), ("rtd_loss", rtd.detach())):
                self._parts[name] = self._parts.get(name, 0) + part
            self._parts_steps += 1
        mlm = self._masked_token_loss(nll, num_items_in_batch)
        if self.loss_is_scaled_for_ga:  # the MLM part is normalised over the accumulated batch; the RTD mean is per batch
            rtd = rtd / self.current_gradient_accumulation_steps
        loss = mlm + DISCRIMINATOR_WEIGHT * rtd
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts_steps:  # a training log: the two losses of this process's batches
            logs.update({name: round(total.item() / self._parts_steps, 4) for name, total in self._parts.items()})
            self._parts, self._parts_steps = {}, 0
        super().log(logs, start_time)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, Any, Any]:
        """Loss plus, per masked token, (generator's predicted id, its loss), and per token the RTD logit and label."""
        inputs = self._mask(self._prepare_inputs(inputs))
        with torch.no_grad(), self.compute_loss_context_manager():
            out, nll, rtd = self._forward(model, inputs)
        loss = (nll.mean() + DISCRIMINATOR_WEIGHT * rtd).detach()
        if prediction_loss_only:
            return loss, None, None
        # One row per batch: processes and batches hold different N, padded along dim 1 with -100 when gathered.
        generated = torch.stack([out.mlm_logits.argmax(-1).float(), nll], dim=-1)[None]  # (1, N, 2)
        preds = (generated, out.rtd_logits.float().reshape(1, -1))
        labels = (out.mlm_targets[None], out.rtd_labels.reshape(1, -1))
        return loss, preds, labels

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        sampler = self._sampling_rng()
        training_state = sampler.get_state()
        sampler.manual_seed(self.args.seed + 2_000_003)  # the same eval samples for the same generator
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            sampler.set_state(training_state)

    def _sampler_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"sampling_rng_{self.args.process_index}.pt")

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save(self._sampling_rng().get_state(), self._sampler_file(output_dir))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str) and os.path.isfile(self._sampler_file(resume_from_checkpoint)):
            self._sampling_rng().set_state(torch.load(self._sampler_file(resume_from_checkpoint), weights_only=True))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.save_training_module(output_dir, state_dict, lambda joint, out, weights: joint.save_discriminator(out, weights))


def replaced_token_metrics(pred: EvalPrediction) -> dict[str, float]:
    """The generator's masked-token metrics (masked_lm_metrics) and the discriminator's over every non-padding token:
    rtd_loss, rtd_accuracy, rtd_replaced_recall (the replaced tokens it caught) and replaced_fraction (the share of
    tokens replaced: 1 - replaced_fraction is the accuracy of always answering "original")."""
    (generated, rtd_logits), (targets, rtd_labels) = pred.predictions, pred.label_ids
    metrics = masked_lm_metrics(EvalPrediction(predictions=generated, label_ids=targets))
    logits, labels = np.asarray(rtd_logits, dtype=np.float64).reshape(-1), np.asarray(rtd_labels).reshape(-1)
    keep = labels != -100  # padding, and what gathering batches and processes added
    logits, labels = logits[keep], labels[keep]
    if len(labels) == 0:
        return metrics
    replaced = labels == 1
    loss = np.logaddexp(0.0, -logits) * replaced + np.logaddexp(0.0, logits) * ~replaced  # binary cross-entropy
    return {
        **metrics,
        "rtd_loss": float(loss.mean()),
        "rtd_accuracy": float(((logits > 0) == replaced).mean()),
        "rtd_replaced_recall": float((logits[replaced] > 0).mean()) if replaced.any() else float("nan"),
        "replaced_fraction": float(replaced.mean()),
    }
