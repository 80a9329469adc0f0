"""Contrastive image-text alignment (CLIP, SigLIP) of a stock `VisionTextDualEncoderModel`.

The losses follow the papers and open_clip: CLIP's symmetric softmax cross-entropy over the batch's similarity matrix
with a learned temperature, clamped at 100 as CLIP clamps it (Radford et al. 2021), and SigLIP's pairwise sigmoid
loss with its learned temperature and bias, initialised at 10 and -10 (Zhai et al. 2023). When a caption occurs more
than once in a batch (class captions always do), every image with that caption is a positive for it: the softmax
targets spread evenly over the positives, and SigLIP labels each such pair +1.

Written here, because transformers' `image_text_contrastive_loss` knows one positive per row and no SigLIP for this
class, and no library evaluates zero-shot classification and retrieval inside a Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from hfssl.data.image_text import caption
from hfssl.precision import MasterWeightsMixin, with_master_weights
from hfssl.runs import LossOnlyEvaluation, TimedTrainer

__all__ = [
    "LOGIT_SCALE_MAX",
    "PROMPTS",
    "AlignmentScorer",
    "DualEncoderContrastive",
    "ContrastiveTrainer",
    "clip_loss",
    "embed_images",
    "embed_texts",
    "lock_tower",
    "recall_at_k",
    "siglip_loss",
    "zero_shot_scores",
]

LOGIT_SCALE_MAX = math.log(100)  # CLIP: the temperature's inverse is clamped at 100
SIGLIP_SCALE_INIT, SIGLIP_BIAS_INIT = math.log(10), -10.0  # SigLIP's t' = log 10 and b = -10


def positives(ids: torch.Tensor) -> torch.Tensor:
    """(B,) caption ids -> (B, B) bool: the pairs whose captions are the same (the diagonal always)."""
    return ids[:, None] == ids[None, :]


def clip_loss(logits_per_text: torch.Tensor, caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy of (B, B) text-by-image logits; with `caption_ids`, images sharing a caption
    are all positives (soft targets spread evenly over them)."""
    logits = logits_per_text.float()
    if caption_ids is None:
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    same = positives(caption_ids).float()
    target = same / same.sum(-1, keepdim=True)  # symmetric: the same matrix serves both directions
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def siglip_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    caption_ids: torch.Tensor | None,
) -> torch.Tensor:
    """SigLIP's loss: -mean over texts of the summed log-sigmoid of +-(scale x cosine + bias), + for positive pairs."""
    logits = (text_embeds.float() @ image_embeds.float().t()) * scale + bias
    same = torch.eye(len(logits), device=logits.device, dtype=torch.bool) if caption_ids is None else positives(caption_ids)
    signs = same.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / len(logits)


class DualEncoderContrastive(nn.Module):
    """The Trainer's model: the stock dual encoder, and SigLIP's bias when that loss is used (not part of the saved
    model: a constant shift of every logit changes no ranking or zero-shot prediction)."""

    main_input_name = "input_ids"

    def __init__(self, dual: PreTrainedModel, loss: str = "clip") -> None:
        super().__init__()
        self.dual, self.loss_type = dual, loss
        if loss == "siglip":
            with torch.no_grad():
                dual.logit_scale.fill_(SIGLIP_SCALE_INIT)
            self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_BIAS_INIT))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        caption_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.loss_type == "clip":
            with torch.no_grad():
                self.dual.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.dual(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **extra)
        if self.loss_type == "clip":
            loss = clip_loss(out.logits_per_text, caption_ids)
        else:
            loss = siglip_loss(out.text_embeds, out.image_embeds, self.dual.logit_scale.exp(), self.logit_bias, caption_ids)
        return {"loss": loss}


def lock_tower(tower: nn.Module, unlocked_layers: int) -> int:
    """Freeze a tower (LiT's locked image tower) except its top `unlocked_layers` layers and what follows them
    (final norm, pooler); returns the number of parameters left trainable."""
    layers = _layers(tower)
    keep = set()
    if unlocked_layers:
        for layer in layers[-unlocked_layers:]:
            keep |= {id(p) for p in layer.parameters()}
        after = [m for n, m in tower.named_children() if n in ("layernorm", "pooler", "final_layernorm")]
        for module in after:
            keep |= {id(p) for p in module.parameters()}
    trainable = 0
    for p in tower.parameters():
        p.requires_grad_(id(p) in keep)
        trainable += p.numel() if id(p) in keep else 0
    return trainable


def _layers(tower: nn.Module) -> list[nn.Module]:
    """The tower's transformer blocks, in order (the longest ModuleList in it)."""
    lists = [m for m in tower.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(tower).__name__} has no list of layers to leave unlocked.")
    return list(max(lists, key=len))


@torch.no_grad()
def embed_texts(
    dual: PreTrainedModel, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 256
) -> torch.Tensor:
    """(N, projection_dim) L2-normalised text embeddings, as the stock model computes them."""
    device, out = next(dual.parameters()).device, []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        out.append(F.normalize(dual.get_text_features(**batch).pooler_output.float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def embed_images(dual: PreTrainedModel, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, projection_dim) L2-normalised image embeddings of normalised (N, C, H, W) pixels."""
    device, out = next(dual.parameters()).device, []
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start : start + batch_size].to(device)
        out.append(F.normalize(dual.get_image_features(pixel_values=batch).pooler_output.float(), dim=-1))
    return torch.cat(out)


def recall_at_k(similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of rows (queries) with a relevant column among their top k: (Q, C) similarity and (Q, C) bool."""
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {k: float(hits[:, :k].any(dim=1).double().mean()) for k in ks if k <= similarity.shape[1]}


def zero_shot_scores(image_embeds: torch.Tensor, labels: np.ndarray, class_embeds: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero-shot accuracy for each way of embedding the class names: {name: (K, D) normalised class embeddings}."""
    truth = torch.as_tensor(labels)
    return {name: float(((image_embeds @ e.t()).argmax(1).cpu() == truth).double().mean()) for name, e in class_embeds.items()}


# The zero-shot prompt ensemble: the caption template first (what pipeline("zero-shot-image-classification") runs
# with hypothesis_template), then generic prompts in CLIP's style; their text embeddings are averaged per class.
PROMPTS = ("a photo of a {label}.", "a picture of a {label}.", "an image of a {label}.", "a {label}.", "{label}")


def chance_recall(candidates: int, relevant: np.ndarray, k: int) -> float:
    """Expected recall@k of a random ranking: 1 - C(N - m, k) / C(N, k) for each query's m relevant items, averaged."""
    k = min(k, candidates)
    return float(np.mean([1 - math.comb(candidates - int(m), k) / math.comb(candidates, k) for m in relevant]))


@dataclass
class AlignmentScorer:
    """Zero-shot classification and cross-modal retrieval on held-out pairs, each beside its chance level.

    Retrieval ranks the held-out set's distinct captions for each image (image->text) and the images for each
    distinct caption (text->image); an item is relevant when its caption is the query's. Zero-shot classifies the
    images among the class names with the caption template alone (what the Hub pipeline computes) and with the
    prompt ensemble.
    """

    pixel_values: torch.Tensor  # (N, C, H, W), normalised
    captions: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None
    template: str
    tokenizer: Any
    max_length: int
    ks: tuple[int, ...] = (1, 5, 10)

    def __call__(self, dual: PreTrainedModel) -> dict[str, float]:
        """The scores of `dual` as it is: in fp32 after training (what the Hub pipeline computes), under bf16 autocast
        while it trains with bf16 weights."""
        device = next(dual.parameters()).device
        low = any(p.dtype == torch.bfloat16 for p in dual.parameters())
        was_training = dual.training
        dual.eval()
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
                return self._score(dual)
        finally:
            dual.train(was_training)

    def _score(self, dual: PreTrainedModel) -> dict[str, float]:
        images = embed_images(dual, self.pixel_values)
        distinct = list(dict.fromkeys(self.captions))
        texts = embed_texts(dual, self.tokenizer, distinct, self.max_length)
        index = {c: i for i, c in enumerate(distinct)}
        relevant = torch.zeros(len(images), len(distinct), dtype=torch.bool)
        relevant[torch.arange(len(images)), torch.tensor([index[c] for c in self.captions])] = True
        sim = (images @ texts.t()).cpu()
        scores: dict[str, float] = {}
        for direction, s, r in (("image_to_text", sim, relevant), ("text_to_image", sim.t(), relevant.t())):
            per_query = r.sum(1).numpy()
            for k, value in recall_at_k(s, r, self.ks).items():
                scores[f"{direction}_recall@{k}"] = value
                scores[f"{direction}_recall@{k}_chance"] = chance_recall(s.shape[1], per_query, k)
        if self.labels is not None and self.class_names:
            prompts = list(dict.fromkeys((self.template, *PROMPTS)))
            single = embed_texts(dual, self.tokenizer, [caption(self.template, n) for n in self.class_names], self.max_length)
            each = [
                embed_texts(dual, self.tokenizer, [caption(p, n) for n in self.class_names], self.max_length) for p in prompts
            ]
            ensemble = F.normalize(torch.stack(each).mean(0), dim=-1)
            zero_shot = zero_shot_scores(
                images, self.labels, {"zero_shot_accuracy": single, "zero_shot_ensemble_accuracy": ensemble}
            )
            scores.update(zero_shot, zero_shot_chance=1 / len(self.class_names))
        return scores


class ContrastiveTrainer(MasterWeightsMixin, LossOnlyEvaluation, TimedTrainer):
    """A Trainer for `DualEncoderContrastive`: checkpoints hold the whole module (SigLIP's bias included) so that a
    run resumes exactly; the final save writes the stock `VisionTextDualEncoderModel` alone. Evaluation is the
    held-out loss, and the retrieval and zero-shot scores of the scorer."""

    def __init__(self, *args: Any, scorer: AlignmentScorer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer = scorer

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        out = model(**inputs)
        return (out["loss"], out) if return_outputs else out["loss"]

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """As the Trainer's, without the temperature and bias (CLIP and open_clip do not decay them)."""
        return [n for n in super().get_decay_parameter_names(model) if not n.endswith(("logit_scale", "logit_bias"))]

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        return with_master_weights(self, super().create_optimizer(model), model)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if self.scorer is not None and self.is_world_process_zero():
            dual = self.accelerator.unwrap_model(self.model).dual
            output.metrics.update({f"{prefix}_{k}": v for k, v in self.scorer(dual).items()})
        return output

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        def final(joint: nn.Module, out: str, weights: dict[str, torch.Tensor]) -> None:
            joint.dual.save_pretrained(
                out, state_dict={k.removeprefix("dual."): v for k, v in weights.items() if k.startswith("dual.")}
            )

        self.save_training_module(output_dir, state_dict, final)
