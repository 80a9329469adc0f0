"""A text and an image encoder joined as transformers' stock `VisionTextDualEncoderModel`.

That class reads each tower's `pooler_output` as its embedding, so the joined model is only right if each tower, as
the stock class rebuilds it from the saved config, pools the way it was trained. Two traps are handled here:

- **Towers without a pooler.** `ModernBertModel` and `DistilBertModel` return no `pooler_output`, and the stock
  class then fails with IndexError/TypeError deep inside its forward. Every tower is run once on a dummy input
  before training; one without a pooled output is refused with the fix. A BERT-family checkpoint saved without
  its pooler (as hfssl's mlm.py and many sentence encoders save it) gets a fresh pooler, logged, which the
  alignment trains and the saved model keeps.
- **MAE checkpoints.** `AutoModel` loads a ViT-MAE checkpoint as `ViTMAEModel`, which masks 75% of the patches
  at every forward pass: a model would train and predict on random masks. Its encoder is rebuilt as a stock
  `BeitModel` that pools by the layer norm of the patch mean (exactly what hfssl's mim.py saves), so the
  embedding is deterministic and rebuilt identically by the stock class.

From scratch, the text tower is a BERT of a preset size (its pooler: tanh of a dense layer on [CLS]) and the image
tower a ViT-like BEiT (mean pooling), the architectures whose stock classes pool natively.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, BertConfig, PreTrainedModel, ViTConfig

from hfssl.models import TEXT_PRESETS, VISION_PRESETS, beit_config, check_model_path, fit_vocabulary, vit_to_beit
from hfssl.outputs import read_record

__all__ = ["CLIP_LOGIT_SCALE_INIT", "check_pooled", "image_tower", "join_towers", "text_tower"]

logger = logging.getLogger(__name__)

CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature, 0.07
_IMAGE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def check_pooled(model: PreTrainedModel, kind: str, source: str) -> None:
    """Run `model` once on a dummy input; ValueError naming the fix unless it returns a (1, hidden) pooled output."""
    config = model.config
    if kind == "text":
        inputs = {"input_ids": torch.tensor([[getattr(config, "pad_token_id", 0) or 0] * 4]), "attention_mask": torch.ones(1, 4)}
        fix = (
            "Use a text encoder with a pooler: a BERT-family model (hfssl mlm --architecture bert, the packaged MiniLM, "
            "a Hub BERT/RoBERTa/ELECTRA), or --text_preset to build one."
        )
    else:
        size, channels = config.image_size, getattr(config, "num_channels", 3)
        inputs = {"pixel_values": torch.zeros(1, channels, size, size)}
        fix = "Use a ViT, BEiT or ViT-MAE checkpoint (hfssl mim outputs are BEiT with mean pooling), or --image_preset."
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pooled = getattr(model(**inputs), "pooler_output", None)
    finally:
        model.train(was_training)
    if not isinstance(pooled, torch.Tensor) or pooled.shape != (1, config.hidden_size):
        raise ValueError(
            f"The {kind} tower {source} ({type(model).__name__}) returns no pooled output, and "
            f"VisionTextDualEncoderModel reads `pooler_output` as the {kind} embedding. {fix}"
        )


def text_tower(
    model_name_or_path: str | None,
    preset: str | None,
    tokenizer: Any,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> PreTrainedModel:
    """The text encoder: a checkpoint's base model (a missing pooler initialised fresh, and logged) or a BERT of
    `preset` for `tokenizer`'s vocabulary."""
    if model_name_or_path is None:
        config = BertConfig(**TEXT_PRESETS[preset or "tiny"])
        fit_vocabulary(config, tokenizer)
        model, source = AutoModel.from_config(config), f"--text_preset {preset or 'tiny'}"
    else:
        check_model_path(model_name_or_path, "text_model_name_or_path")
        model, info = AutoModel.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir, output_loading_info=True
        )
        source = model_name_or_path
        fresh = sorted(k for k in info["missing_keys"] if k.startswith("pooler"))
        if fresh:
            logger.info("Text tower %s: its pooler starts fresh (%s); the alignment trains it", source, ", ".join(fresh))
        warn_if_on_plateau(model_name_or_path)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but {source} embeds {model.get_input_embeddings().num_embeddings}."
            )
    check_pooled(model, "text", source)
    return model


def warn_if_on_plateau(path: str) -> bool:
    """Warn when an hfssl mlm output never left its corpus's unigram plateau (its hfssl.json says so): such an encoder
    gives nearly the same output for every caption, and an unlocked alignment from it can collapse to chance (loss at
    ln(batch)). Returns whether it warned."""
    metrics = (read_record(path) or {}).get("metrics", {})
    if metrics.get("left_unigram_plateau", True):
        return False
    logger.warning(
        "Text tower %s never left the unigram plateau of its pretraining (eval MLM loss %.2f against %.2f): its outputs "
        "barely depend on the caption, and the alignment may stay at chance. Pretrain it longer (mlm.py --time_budget), "
        "or use a pretrained text encoder (the packaged MiniLM, a Hub BERT).",
        path,
        metrics.get("eval_mlm_loss", float("nan")),
        metrics.get("unigram_loss", float("nan")),
    )
    return True


def image_tower(
    model_name_or_path: str | None,
    preset: str | None,
    image_size: int | None = None,
    patch_size: int | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> PreTrainedModel:
    """The image encoder: a checkpoint's base model (a ViT-MAE one as a mean-pooling BeitModel) or a ViT-like BEiT
    of `preset` reading RGB."""
    from transformers import BeitModel

    if model_name_or_path is None:
        size = VISION_PRESETS[preset or "tiny"]
        vit = ViTConfig(
            **{f: size[f] for f in _IMAGE_FIELDS},
            image_size=image_size or size["image_size"],
            patch_size=patch_size or size["patch_size"],
            num_channels=3,
        )
        if vit.image_size % vit.patch_size:
            raise ValueError(f"--patch_size {vit.patch_size} must divide --image_size {vit.image_size}.")
        model, source = (
            BeitModel(beit_config(vit, mean_pooling=True), add_pooling_layer=True),
            f"--image_preset {preset or 'tiny'}",
        )
    else:
        check_model_path(model_name_or_path, "image_model_name_or_path")
        source = model_name_or_path
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
        if config.model_type == "vit_mae":  # its stock model masks patches at random at every call: rebuild it
            mae = AutoModel.from_pretrained(model_name_or_path, cache_dir=cache_dir)
            model = BeitModel(beit_config(config, mean_pooling=True), add_pooling_layer=True)
            missing, _ = model.load_state_dict(vit_to_beit(mae.state_dict(), mean_pooling=True), strict=False)
            if missing:
                raise ValueError(f"The ViT-MAE checkpoint {source} lacks encoder weights: {', '.join(missing[:5])}")
            logger.info("Image tower %s: a ViT-MAE encoder, used whole (no masking) and pooled by its patch mean", source)
        else:
            model, info = AutoModel.from_pretrained(
                model_name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir, output_loading_info=True
            )
            fresh = sorted(k for k in info["missing_keys"] if k.startswith("pooler"))
            if fresh:
                logger.info("Image tower %s: its pooler starts fresh (%s); the alignment trains it", source, ", ".join(fresh))
    check_pooled(model, "image", source)
    return model


def join_towers(
    image: PreTrainedModel, text: PreTrainedModel, projection_dim: int, logit_scale_init: float = CLIP_LOGIT_SCALE_INIT
) -> PreTrainedModel:
    """The stock dual encoder over the two towers (shared, not copied), with fresh projections and temperature."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        image.config, text.config, projection_dim=projection_dim, logit_scale_init_value=logit_scale_init
    )
    return VisionTextDualEncoderModel(config=config, vision_model=image, text_model=text)
