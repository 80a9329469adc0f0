"""Sentence-level denoising (TSDAE) to adapt a sentence encoder to a new domain.

TSDAE (Wang, Reimers & Gurevych, EMNLP Findings 2021, https://arxiv.org/abs/2104.06979): delete
most words of a sentence, pool what is left into one vector, and train a decoder that sees only
that vector (cross-attention to a single position) to rebuild the whole sentence. Masked-token
modeling trains token predictions; TSDAE trains the pooled sentence vector itself, which is what
a mean-pooling classifier reads. On the WordNet glosses benchmark (docs/benchmarks.md), masked-token
DAPT of the contrastively trained all-MiniLM-L6-v2 raised its few-label accuracy slightly, and TSDAE
lowered it slightly: which adaptation helps depends on the corpus, so compare them on validation data.

The objective is sentence-transformers' `DenoisingAutoEncoderLoss` (the reference implementation:
a decoder built from the encoder's own checkpoint, weights tied to the encoder). Written here, as
no library does it: word-deletion noise drawn per batch in a collator, a module that hands the
Trainer's batches to that loss, and a Trainer that saves the encoder as a plain transformers
checkpoint (what `from_pretrained` and hfssl's fine-tuning recipes load).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn
from transformers import TrainerCallback

from hfssl.runs import TimedTrainer

__all__ = [
    "DenoisingCollator",
    "SentenceDenoiser",
    "SentenceDenoisingTrainer",
    "check_decoder_support",
    "delete_words",
    "drop_blank_rows",
]

CHECKPOINT_WEIGHTS = "denoiser.safetensors"  # encoder + decoder + cross-attention, in checkpoints only


def delete_words(text: str, ratio: float, rng: np.random.Generator) -> str:
    """`text` with each whitespace-separated word deleted with probability `ratio`; at least one word stays."""
    words = text.split()
    if not words:
        return text
    keep = rng.random(len(words)) >= ratio
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


@dataclass
class DenoisingCollator:
    """Rows of raw text -> the damaged sentences (encoder input) and the originals (decoder target), tokenized.

    Each sentence's deletions are drawn from a generator seeded by (seed, round, the sentence): the same in
    every run with the same seed, new in every epoch (the trainer sets `round` to epoch + 1), fixed for
    evaluation (round 0), and independent of batching, data-loader prefetching or resuming from a checkpoint.
    """

    tokenizer: Any
    text_column: str
    deletion_ratio: float = 0.6
    max_length: int = 128
    seed: int = 42
    round: int = 1

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [str(row[self.text_column]) for row in rows]
        settings = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        # The target, tokenized once. Its offsets (fast tokenizers) give the part of each text that fits, so the
        # encoder only sees words the decoder is asked to rebuild.
        fast = getattr(self.tokenizer, "is_fast", False)
        target = self.tokenizer(texts, return_offsets_mapping=fast, **settings)
        if fast:
            ends = target.pop("offset_mapping")[..., 1].amax(dim=1).tolist()
            texts = [t[:end] if end < len(t.rstrip()) else t for t, end in zip(texts, ends)]
        noisy = [
            delete_words(t, self.deletion_ratio, np.random.default_rng([self.seed, self.round, zlib.crc32(t.encode())]))
            for t in texts
        ]
        source = self.tokenizer(noisy, **settings)
        batch = {key: source[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in source}
        batch.update(target_input_ids=target["input_ids"], target_attention_mask=target["attention_mask"])
        return batch


class _NewNoiseEachEpoch(TrainerCallback):
    def __init__(self, collator: DenoisingCollator) -> None:
        self.collator = collator

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.collator.round = 1 + int(state.epoch or 0)


def drop_blank_rows(raw: Any, text_column: str) -> Any:
    """Drop rows whose text is missing or blank (they would teach the decoder to emit [SEP]); fail if none is left."""
    raw = raw.filter(lambda row: row[text_column] is not None and bool(str(row[text_column]).strip()))
    for split in raw:
        if hasattr(raw[split], "__len__") and len(raw[split]) == 0:
            raise ValueError(f"The {split} split has no non-blank text in column {text_column!r}: give text to adapt to.")
    return raw


def check_decoder_support(config: Any, option: str = "model_name_or_path") -> None:
    """TSDAE builds its decoder from the encoder's own architecture: it needs a causal-LM class with cross-attention."""
    encoders = ("bert", "roberta", "xlm-roberta", "electra", "ernie", "camembert", "data2vec-text")  # each has a *ForCausalLM
    if config.model_type not in encoders:
        raise ValueError(
            f"--{option}: TSDAE ties a decoder to the encoder, which needs an encoder architecture with a "
            f"decoder form ({', '.join(encoders)}); this model is {config.model_type!r}. Use a BERT-like "
            "sentence encoder (e.g. sentence-transformers/all-MiniLM-L6-v2), or recipes/mlm.py for DAPT."
        )


class SentenceDenoiser(nn.Module):
    """A sentence encoder (any BERT-like checkpoint, pooled the way its sentence-transformers config says, else
    mean pooling) plus sentence-transformers' TSDAE decoder, with the loss as the output the Trainer reads."""

    def __init__(
        self, model_name_or_path: str, max_seq_length: int, trust_remote_code: bool = False, cache_dir: str | None = None
    ) -> None:
        super().__init__()
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss

        if not os.path.isdir(str(model_name_or_path)):
            # one local copy for both: sentence-transformers builds the decoder from the encoder's path without
            # --cache_dir, so a Hub id would be fetched a second time into the default cache
            from huggingface_hub import snapshot_download

            model_name_or_path = snapshot_download(str(model_name_or_path), cache_dir=cache_dir)
        sentence_model = SentenceTransformer(
            str(model_name_or_path), device="cpu", trust_remote_code=trust_remote_code, cache_folder=cache_dir
        )
        self.served_max_seq_length = sentence_model.max_seq_length  # what the saved sentence encoder will use
        sentence_model.max_seq_length = max_seq_length
        self.objective = DenoisingAutoEncoderLoss(sentence_model, tie_encoder_decoder=True)

    @property
    def encoder(self) -> Any:
        """The transformers model inside the sentence encoder (its weights are shared with the decoder)."""
        return self.objective.encoder.transformers_model

    def save_sentence_modules(self, output_dir: str) -> None:
        """The sentence-transformers files of the encoder (modules.json, its pooling and Normalize, configs), so that
        `SentenceTransformer(output_dir)` embeds as the base model's pipeline did, with the base's sequence length."""
        sentence_model = self.objective.encoder
        training_length, sentence_model.max_seq_length = sentence_model.max_seq_length, self.served_max_seq_length
        try:
            sentence_model.save(output_dir, create_model_card=False)
        finally:
            sentence_model.max_seq_length = training_length

    @property
    def encoder_prefix(self) -> str:
        """The encoder's key prefix in this module's state dict (where it sits depends on the sentence-transformers version)."""
        return next(name for name, module in self.named_modules() if module is self.encoder) + "."

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_input_ids: torch.Tensor,
        target_attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = True,
    ) -> dict[str, torch.Tensor]:
        """`return_loss=True` in the signature tells the Trainer to evaluate the loss of a batch without labels."""
        source = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            source["token_type_ids"] = token_type_ids
        target = {"input_ids": target_input_ids, "attention_mask": target_attention_mask}
        return {"loss": self.objective([source, target], None)}


class SentenceDenoisingTrainer(TimedTrainer):
    """Saves the encoder as a transformers checkpoint; checkpoints also keep the decoder, so a resumed run
    continues exactly where it stopped. Each epoch draws new deletions; evaluation always uses the same ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(_NewNoiseEachEpoch(self.data_collator))

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The held-out loss with the same deletions at every evaluation, so evaluations are comparable."""
        collator = self.data_collator
        training_round, collator.round = collator.round, 0
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            collator.round = training_round

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        denoiser = self.accelerator.unwrap_model(self.model)
        state_dict = denoiser.state_dict() if state_dict is None else state_dict
        if not state_dict:  # DeepSpeed ZeRO-3 without gathered weights: it writes its own checkpoint next
            return
        prefix = denoiser.encoder_prefix
        encoder_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not encoder_state:  # a gathered (DDP/FSDP/DeepSpeed) state dict must never be swapped for the local one
            raise RuntimeError(f"No encoder weights (keys starting with {prefix!r}) in the state dict to save.")
        if not self._checkpointing:  # the final model: a sentence-transformers model too (its weights are written next)
            denoiser.save_sentence_modules(output_dir)
        denoiser.encoder.save_pretrained(output_dir, state_dict=encoder_state)
        if self._checkpointing:  # tied tensors are stored once per name: safetensors refuses shared storage
            safetensors.torch.save_file(
                {k: v.detach().clone().contiguous() for k, v in state_dict.items()},
                os.path.join(output_dir, CHECKPOINT_WEIGHTS),
                metadata={"format": "pt"},
            )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_best_model(self) -> None:
        """--load_best_model_at_end: checkpoints' model.safetensors hold the encoder only; reload the whole model."""
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:
            raise ValueError(
                "Resuming the tsdae recipe under FSDP is not supported (its checkpoints hold a full state "
                "dict): resume with DDP or DeepSpeed, or start the run again."
            )
        model = self.accelerator.unwrap_model(model or self.model)
        path = os.path.join(resume_from_checkpoint, CHECKPOINT_WEIGHTS)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint} has no {CHECKPOINT_WEIGHTS}: it is not a checkpoint of the tsdae "
                "recipe. Pass a checkpoint-N folder this recipe wrote, or start the run again."
            )
        model.load_state_dict(safetensors.torch.load_file(path, device="cpu"))
