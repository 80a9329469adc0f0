"""Model size presets and building/loading of the encoders hfssl pretrains.

Text presets follow the BERT miniatures of Turc et al. (2019), "Well-Read Students Learn Better"
(tiny 2x128, mini 4x256, small 4x512, base 12x768). From scratch they are built as ModernBERT by
default (`--architecture`): its `ModernBertForSequenceClassification` mean-pools the token states
natively (`classifier_pooling="mean"`), so a fine-tuned model loads with the stock classes and
predicts exactly as hfssl evaluated it; BERT's stock classifier can only read the [CLS] token.
Vision presets: small and base are ViT-S/16
and ViT-B/16 with the MAE paper's decoder widths; tiny is a 4-layer ViT at 16 pixels with 4-pixel
patches, sized for the embedded 8x8 digits and a few minutes on a laptop CPU (pass --image_size 32
for CIFAR-like images).

In transformers 5, ViT and ViT-MAE encoders share their module names (embeddings, layers.N,
layernorm), so one encoder's weights load into the other: MAE and SimMIM can start from either
kind of checkpoint, and every pretrained encoder is saved as a stock `ViTModel`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig, ModernBertConfig, PreTrainedModel

__all__ = [
    "TEXT_PRESETS",
    "VISION_PRESETS",
    "build_masked_image_model",
    "build_electra_models",
    "build_masked_lm",
    "fit_vocabulary",
    "check_electra_support",
    "check_model_path",
    "generator_config",
    "load_config",
    "masked_image_config",
    "mlm_config",
    "modernbert_config",
    "set_dropout",
    "usable_positions",
    "use_fast_attention",
    "beit_config",
    "beit_to_vit",
    "check_vit_like",
    "pooled_encoder",
    "rgb_input",
    "rgb_processor",
    "vit_like",
    "vit_to_beit",
]

logger = logging.getLogger(__name__)

TEXT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}

_DECODERS = {  # MAE decoders: narrow and shallow, since the encoder alone is kept
    "tiny": dict(
        decoder_num_hidden_layers=2, decoder_hidden_size=128, decoder_num_attention_heads=4, decoder_intermediate_size=512
    ),
    "small": dict(
        decoder_num_hidden_layers=4, decoder_hidden_size=256, decoder_num_attention_heads=8, decoder_intermediate_size=1024
    ),
    "base": dict(
        decoder_num_hidden_layers=8, decoder_hidden_size=512, decoder_num_attention_heads=16, decoder_intermediate_size=2048
    ),
}
VISION_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        num_hidden_layers=4,
        hidden_size=192,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=16,
        patch_size=4,
        **_DECODERS["tiny"],
    ),
    "small": dict(
        num_hidden_layers=12,
        hidden_size=384,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
        **_DECODERS["small"],
    ),
    "base": dict(
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        **_DECODERS["base"],
    ),
}
# Config fields that describe the encoder, the same in ViTConfig and ViTMAEConfig.
_ENCODER_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)


def check_model_path(path: str, option: str = "model_name_or_path") -> None:
    """Fail early and clearly on a local path that is missing or is not a full model."""
    looks_local = os.path.sep in path and (path.startswith((".", os.path.sep, "~")) or os.path.exists(path))
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"--{option} {path} does not exist. Give a local model directory or a Hub model id.")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        if os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise ValueError(
                f"--{option} {path} is a LoRA adapter, not a full model. Pass its base model as --{option} "
                "(see base_model_name_or_path in adapter_config.json), or a merged model written with --merge_lora."
            )
        raise ValueError(f"--{option} {path} has no config.json, so it is not a saved model directory.")


def usable_positions(config: Any, tokenizer: Any, requested: int | None = None) -> int:
    """Tokens per example: `requested` (checked against the model) or min(512, what the model allows)."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # RoBERTa reserves positions for the padding offset
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 1_000_000:  # "no limit" is encoded as a huge number
        positions = min(positions, tok_max)
    if requested is None:
        return min(512, positions)
    if requested > positions:
        raise ValueError(
            f"--max_seq_length {requested} is beyond the model's {positions} positions. Pass --max_seq_length "
            f"{positions} or less (from scratch, raise it with --config_overrides max_position_embeddings=N)."
        )
    return requested


_SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "image_size",
    "patch_size",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)


def _apply_overrides(config: Any, overrides: str | None) -> None:
    """Apply --config_overrides and check that the sizes still build a model (transformers would fail later, or not at all)."""
    if not overrides:
        return
    layer_types = getattr(config, "layer_types", None)  # ModernBERT: one entry per layer, checked against the depth
    if layer_types is not None:
        config.layer_types = None
    try:
        config.update_from_string(overrides)
    except ValueError as err:
        raise ValueError(f"--config_overrides {overrides!r}: {err}. Use 'key=value,key=value' with config field names.") from None
    finally:
        if layer_types is not None and getattr(config, "layer_types", None) is None:  # the same pattern, at the new depth
            config.layer_types = [layer_types[i % len(layer_types)] for i in range(config.num_hidden_layers)]
    for name in _SIZES:
        value = getattr(config, name, None)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"--config_overrides {overrides!r}: {name} must be a positive integer, got {value}.")
    for prefix in ("", "decoder_"):
        width, heads = getattr(config, f"{prefix}hidden_size", None), getattr(config, f"{prefix}num_attention_heads", None)
        if width and heads and width % heads:
            raise ValueError(
                f"--config_overrides {overrides!r}: {prefix}hidden_size {width} is not a multiple of "
                f"{prefix}num_attention_heads {heads}. Pick sizes such as hidden_size={heads * max(1, width // heads)}."
            )


def modernbert_config(size: dict[str, int]) -> ModernBertConfig:
    """A ModernBERT config at a BERT preset's size: the same parameter count (its GeGLU feed-forward has two input
    projections, so the hidden width is 2/3 of BERT's), every layer attending globally (the sliding window only pays
    beyond a few hundred tokens), mean pooling for classifiers, and 512 positions as BERT."""
    glu = max(8, round(size["intermediate_size"] * 2 / 3 / 8) * 8)
    return ModernBertConfig(
        **{**size, "intermediate_size": glu}, max_position_embeddings=512, global_attn_every_n_layers=1, classifier_pooling="mean"
    )


def mlm_config(
    model_name_or_path: str | None,
    preset: str | None = "tiny",
    config_overrides: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    architecture: str = "modernbert",
) -> Any:
    """The config of the model to pretrain: a checkpoint's, or a preset of `architecture` (vocab size set later)."""
    if model_name_or_path is not None:
        check_model_path(model_name_or_path)
        return load_config(model_name_or_path, trust_remote_code, cache_dir)
    size = TEXT_PRESETS[preset or "tiny"]
    config = modernbert_config(size) if architecture == "modernbert" else BertConfig(**size)
    _apply_overrides(config, config_overrides)
    return config


def build_masked_lm(
    config: Any,
    tokenizer: Any,
    model_name_or_path: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> PreTrainedModel:
    """A masked-LM: loaded from a checkpoint (a missing MLM head is initialised fresh) or built from `config`."""
    if model_name_or_path is None:
        fit_vocabulary(config, tokenizer)
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            model_name_or_path,
            config=config,
            trust_remote_code=trust_remote_code,
            cache_dir=cache_dir,
            output_loading_info=True,
            attn_implementation="sdpa",
        )
    except ValueError as err:
        raise ValueError(
            f"--model_name_or_path {model_name_or_path} ({config.model_type}) has no masked-LM class in "
            f"transformers: {err}. Use a BERT-like encoder (BERT, RoBERTa, DistilBERT, ELECTRA, ModernBERT, ...)."
        ) from None
    fresh = sorted(info.get("missing_keys", []))
    if fresh:
        logger.warning(
            "%s has no (complete) masked-LM head; initialised fresh: %s",
            model_name_or_path,
            ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""),
        )
    model.hfssl_fresh_weights = fresh  # the recipe gives a fresh head its own learning rate
    _check_vocabulary(model, tokenizer, model_name_or_path)
    return model


def fit_vocabulary(config: Any, tokenizer: Any) -> None:
    """A from-scratch config takes the tokenizer's vocabulary size and special-token ids."""
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    if config.model_type == "modernbert":  # its defaults are the ids of ModernBERT's own 50k vocabulary
        config.cls_token_id = config.bos_token_id = tokenizer.cls_token_id
        config.sep_token_id = config.eos_token_id = tokenizer.sep_token_id


def _check_vocabulary(model: PreTrainedModel, tokenizer: Any, model_name_or_path: str) -> None:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but {model_name_or_path} has embeddings for "
            f"{model.get_input_embeddings().num_embeddings}: use the model's own tokenizer (drop --tokenizer_name)."
        )


def check_electra_support(config: Any) -> None:
    """ELECTRA builds a discriminator (a token classifier) and a generator (a masked LM) of the config's family: both
    must exist in transformers, else ValueError naming --objective, before any data is read."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    )

    auto_map = getattr(config, "auto_map", None) or {}
    needed = (
        (
            "token-classification class (the discriminator)",
            MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
            "AutoModelForTokenClassification",
        ),
        ("masked-LM class (the generator)", MODEL_FOR_MASKED_LM_MAPPING_NAMES, "AutoModelForMaskedLM"),
    )
    missing = [what for what, names, auto in needed if config.model_type not in names and auto not in auto_map]
    if missing:
        raise ValueError(
            f"--objective electra: the {config.model_type!r} architecture has no {' and no '.join(missing)} in "
            "transformers. Use a BERT-like encoder (ModernBERT, BERT, RoBERTa, ELECTRA, ...), or --objective mlm."
        )


def generator_config(config: Any) -> Any:
    """ELECTRA's generator: the discriminator's config with a third of its layers (at least 1); the same hidden size,
    so the two can share their embeddings exactly, and the same heads."""
    generator = copy.deepcopy(config)
    generator.num_hidden_layers = max(1, config.num_hidden_layers // 3)
    if isinstance(getattr(config, "layer_types", None), list):  # ModernBERT: one attention type per layer
        generator.layer_types = config.layer_types[: generator.num_hidden_layers]
    return generator


def build_electra_models(
    config: Any,
    tokenizer: Any,
    model_name_or_path: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """ELECTRA's (generator, discriminator), untied: the stock `AutoModelForMaskedLM` of `generator_config(config)`,
    always fresh, and the stock `AutoModelForTokenClassification` with one label (the replaced-token logit), loaded
    from a checkpoint (its 1-logit head initialised fresh) or built from `config`."""
    from transformers import AutoModelForTokenClassification

    if model_name_or_path is None:
        fit_vocabulary(config, tokenizer)
    scorer = copy.deepcopy(config)
    scorer.num_labels = 1
    if model_name_or_path is None:
        discriminator = AutoModelForTokenClassification.from_config(
            scorer, attn_implementation="sdpa", trust_remote_code=trust_remote_code
        )
    else:
        discriminator, info = AutoModelForTokenClassification.from_pretrained(
            model_name_or_path,
            config=scorer,
            trust_remote_code=trust_remote_code,
            cache_dir=cache_dir,
            output_loading_info=True,
            attn_implementation="sdpa",
        )
        logger.info("Discriminator from %s; initialised fresh: %s", model_name_or_path, ", ".join(sorted(info["missing_keys"])))
        _check_vocabulary(discriminator, tokenizer, model_name_or_path)
    generator = AutoModelForMaskedLM.from_config(
        generator_config(config), attn_implementation="sdpa", trust_remote_code=trust_remote_code
    )
    return generator, discriminator


def set_dropout(model: torch.nn.Module, p: float | None) -> None:
    """Set every dropout layer's probability (the config, saved for fine-tuning, is left alone)."""
    if p is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def use_fast_attention(model: torch.nn.Module, device: torch.device | str) -> str:
    """Switch to the attention kernel that trains fastest on `device`; returns its name.

    On CPU, PyTorch's SDPA backward (its flash kernel for CPU) is far slower than its forward:
    measured in recipes/mlm.py on a 2-core Xeon (4-layer BERT, hidden 512, batch 32 x 128):
    60-70 ms per layer against 6 ms forward; the matmul-based "eager" attention computes the same
    thing with bf16 batched matmuls. On GPUs SDPA's fused kernels win, so they are kept there.
    This is a runtime setting: the saved config is unaffected. A module that holds several models (ELECTRA's
    generator and discriminator) switches each of them.
    """
    if not isinstance(model, PreTrainedModel):
        return ", ".join(use_fast_attention(m, device) for m in model.children() if isinstance(m, PreTrainedModel))
    current = getattr(model.config, "_attn_implementation", None)
    if torch.device(device).type == "cpu" and current == "sdpa":
        try:
            model.set_attn_implementation("eager")
        except (ValueError, AttributeError):  # an architecture without the eager path keeps SDPA
            return current
        # Some models keep a private copy of their config in a submodule, which set_attn_implementation
        # does not reach: ViTMAEForPreTraining's decoder deep-copies it, and its bf16 SDPA backward alone
        # took half of an MAE step (138 of 263 ms, tiny preset, batch 128, 2-core Xeon).
        for module in model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "_attn_implementation", None) == "sdpa":
                config._attn_implementation = "eager"
        return "eager"
    return current or "unknown"


def load_config(model_name_or_path: str, trust_remote_code: bool = False, cache_dir: str | None = None) -> Any:
    """Load a config, turning 'not found' into an error that names the option."""
    try:
        return AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model_name_or_path {model_name_or_path}: cannot load a model config ({err}).") from None


def masked_image_config(model_args: Any, masking: Any) -> Any:
    """ViTMAEConfig (mae) or ViTConfig (simmim): a checkpoint's encoder or a preset, with the pretext's settings.

    A from-scratch config has 3 channels until the recipe sets `num_channels` from the data.
    """
    from transformers import ViTConfig, ViTMAEConfig

    if model_args.model_name_or_path:
        check_model_path(model_args.model_name_or_path)
        source = load_config(model_args.model_name_or_path, model_args.trust_remote_code, model_args.cache_dir)
        if source.model_type not in ("vit", "vit_mae", "beit"):
            raise ValueError(
                f"--model_name_or_path {model_args.model_name_or_path} is a {source.model_type!r} model; "
                "masked-image pretraining needs a ViT, ViT-MAE or mim.py (BEiT) checkpoint."
            )
        if source.model_type == "beit":
            check_vit_like(source)
        encoder = {f: getattr(source, f) for f in _ENCODER_FIELDS if hasattr(source, f)}  # BEiT: no qkv_bias (always biased)
        nearest = min(_DECODERS, key=lambda p: abs(VISION_PRESETS[p]["hidden_size"] - source.hidden_size))
        decoder = {f: getattr(source, f, v) for f, v in _DECODERS[nearest].items()}
    else:
        preset = VISION_PRESETS[model_args.model_preset]
        encoder = {f: preset[f] for f in _ENCODER_FIELDS if f in preset}
        encoder.update(
            image_size=model_args.image_size, patch_size=model_args.patch_size, num_channels=model_args.num_channels or 3
        )
        decoder = _DECODERS[model_args.model_preset]
    if masking.method == "mae":
        config = ViTMAEConfig(**encoder, **decoder, mask_ratio=masking.mask_ratio, norm_pix_loss=masking.norm_pix_loss)
    else:
        config = ViTConfig(**encoder, encoder_stride=encoder["patch_size"])
    _apply_overrides(config, model_args.config_overrides)
    _check_mask_geometry(config.image_size, config.patch_size, masking)
    return config


def _check_mask_geometry(image_size: int, patch_size: int, masking: Any) -> None:
    """Masks must tile the image and hide at least one patch while leaving one visible."""
    if image_size % patch_size:
        raise ValueError(f"The model's image size {image_size} is not divisible by its patch size {patch_size}.")
    unit = masking.mask_patch_size or patch_size
    if unit % patch_size or image_size % unit:
        raise ValueError(
            f"--mask_patch_size {unit} must be a multiple of the patch size ({patch_size}) that divides the "
            f"image size ({image_size}), e.g. {patch_size}"
            + (f" or {2 * patch_size}." if image_size % (2 * patch_size) == 0 else ".")
        )
    units = (image_size // unit) ** 2
    masked = (
        math.ceil(units * masking.mask_ratio) if masking.method == "simmim" else units - int(units * (1 - masking.mask_ratio))
    )
    if not 0 < masked < units:
        raise ValueError(
            f"--mask_ratio {masking.mask_ratio} masks {masked} of the {units} mask units: raise it to at least "
            f"{1 / units:.3g} (and keep it below 1) so that some, not all, patches are hidden."
        )


def build_masked_image_model(
    config: Any, model_name_or_path: str | None = None, *, trust_remote_code: bool = False, cache_dir: str | None = None
) -> PreTrainedModel:
    """ViTMAEForPreTraining or ViTForMaskedImageModeling: from scratch, or with a checkpoint's encoder
    (and its decoder when it is of the same kind)."""
    from transformers import AutoModel, ViTForMaskedImageModeling, ViTMAEForPreTraining

    cls = ViTMAEForPreTraining if config.model_type == "vit_mae" else ViTForMaskedImageModeling
    if model_name_or_path is None:
        model = cls(config)
        if config.model_type == "vit_mae":
            _restore_mae_init(model)
        return model
    if load_config(model_name_or_path, trust_remote_code, cache_dir).model_type == config.model_type:
        return cls.from_pretrained(model_name_or_path, config=config, cache_dir=cache_dir)
    model = cls(config)
    source = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    weights = beit_to_vit(source.state_dict()) if source.config.model_type == "beit" else source.state_dict()
    missing, unexpected = model.vit.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "embeddings.mask_token"]  # SimMIM's learned token starts fresh
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(
            f"--model_name_or_path {model_name_or_path}: its encoder does not match a ViT encoder "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]})."
        )
    return model


def _restore_mae_init(model: PreTrainedModel) -> None:
    """Re-run MAE's own initialisers where transformers 5 skips them, leaving frozen all-zero position embeddings.

    In `ViTMAEPreTrainedModel._init_weights` the encoder's sin-cos init returns early once the patch
    projection is marked initialised, and the decoder's sin-cos table is then zeroed: a model built
    from a config cannot tell one patch position from another and learns only the mean image.
    """
    embeddings, decoder = model.vit.embeddings, model.decoder
    if not embeddings.position_embeddings.any():
        embeddings.patch_embeddings.projection._is_hf_initialized = False  # lets initialize_weights run
        embeddings.initialize_weights()  # sin-cos positions, xavier patch projection, CLS token
    if not decoder.decoder_pos_embed.any():
        decoder.initialize_weights(embeddings.patch_embeddings.num_patches)


# ViT encoders are exported and classified as BEiT, whose stock heads can pool the way MAE fine-tunes: BEiT with
# absolute position embeddings, no relative position bias and no layer scale is a ViT, module for module, except
# that its key projection has no bias. That bias adds q.b_k to every attention score of a query, the same for all
# keys, which softmax cancels: dropping it is exact (tests/test_models.py checks it). Its pooler can be the layer
# norm of the patch mean (`use_mean_pooling`: MAE's `fc_norm`) or, without it, the [CLS] state after the final
# layer norm, which is ViT's classifier input: one stock class serves both poolings with no hook.
_BEIT_AS_VIT = dict(
    use_absolute_position_embeddings=True,
    use_relative_position_bias=False,
    use_shared_relative_position_bias=False,
    layer_scale_init_value=0.0,
    drop_path_rate=0.0,
    use_mask_token=False,
)


def beit_config(vit_config: Any, mean_pooling: bool) -> Any:
    """The BeitConfig of a ViT (or ViT-MAE, or BEiT) encoder: same sizes, pooling by the patch mean or by [CLS]."""
    from transformers import BeitConfig

    if vit_config.model_type == "beit":
        check_vit_like(vit_config)
        config = copy.deepcopy(vit_config)
        config.use_mean_pooling = mean_pooling
    else:
        config = BeitConfig(
            **{f: getattr(vit_config, f) for f in _ENCODER_FIELDS if f != "qkv_bias"},
            **_BEIT_AS_VIT,
            use_mean_pooling=mean_pooling,
        )
    for key in ("id2label", "label2id"):
        if getattr(vit_config, key, None) and getattr(vit_config, "num_labels", 2) != 2:
            setattr(config, key, getattr(vit_config, key))
    return config


def vit_like(config: Any) -> bool:
    """Whether a BEiT config is a ViT in disguise (absolute positions, no relative position bias, no layer scale)."""
    return not (
        config.use_relative_position_bias
        or config.use_shared_relative_position_bias
        or not config.use_absolute_position_embeddings
        or config.layer_scale_init_value
    )


def check_vit_like(config: Any) -> None:
    """Raise ValueError for a BEiT that is not a ViT in disguise (relative position bias, layer scale)."""
    if not vit_like(config):
        raise ValueError(
            "This BEiT checkpoint uses relative position biases or layer scale, which a ViT does not have; "
            "hfssl reads BEiT encoders saved by mim.py / finetune_image.py (absolute positions, no layer scale)."
        )


def vit_to_beit(weights: dict[str, torch.Tensor], mean_pooling: bool, prefix: str = "") -> dict[str, torch.Tensor]:
    """A ViT encoder's state dict (`embeddings.`, `layers.N.`, `layernorm.`) in BEiT's names under `prefix`;
    key biases dropped."""
    out = {}
    for key, value in weights.items():
        if key.endswith("attention.k_proj.bias") or key.startswith("pooler.") or key == "embeddings.mask_token":
            continue
        if key.startswith("layernorm.") and mean_pooling:
            key = "pooler." + key
        out[prefix + key] = value
        if key.endswith(("q_proj.weight", "v_proj.weight")) and key.removesuffix("weight") + "bias" not in weights:
            out[prefix + key.removesuffix("weight") + "bias"] = torch.zeros(value.shape[0], dtype=value.dtype)  # qkv_bias=False
    return out


def beit_to_vit(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT-like BEiT encoder's state dict in ViT's names: its final norm from either place, zero key biases."""
    out = {k.removeprefix("pooler."): v for k, v in weights.items() if k != "embeddings.mask_token"}
    for key in [k for k in out if k.endswith("attention.k_proj.weight")]:
        out[key.removesuffix("weight") + "bias"] = torch.zeros(out[key].shape[0], dtype=out[key].dtype)
    return out


def pooled_encoder(model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None = None) -> PreTrainedModel:
    """The encoder of an MAE or SimMIM model as a stock `BeitModel` whose pooler is the layer norm of the patch mean.

    It shares the model's weights (no copy), or takes them from `state_dict`, the whole model's as the Trainer
    gathers it under FSDP or DeepSpeed ZeRO-3 (where each process's own modules hold only shards).
    `pooler_output` is the image embedding that hfssl probes and exports.
    """
    from transformers import BeitModel

    config = beit_config(model.config, mean_pooling=True)
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        encoder = BeitModel(config, add_pooling_layer=True)
    if state_dict is None:
        vit_state = model.vit.state_dict()
    else:
        vit_state = {k[len("vit.") :]: v for k, v in state_dict.items() if k.startswith("vit.")}
    encoder.load_state_dict(vit_to_beit(vit_state, mean_pooling=True), strict=True, assign=True)
    return encoder.eval()


def rgb_input(model: PreTrainedModel) -> PreTrainedModel:
    """Let a grayscale (1-channel) image model read RGB, which is what pipelines feed it; RGB models are returned as they are.

    The first convolution's weights are spread evenly over 3 channels, so a gray image (R = G = B)
    gives the same output as before (timm's `adapt_input_conv`; transformers has no equivalent).
    The new weights are a new tensor: a model sharing the old ones is unaffected.
    """
    if getattr(model.config, "num_channels", 3) != 1:
        return model
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 1)
    first.weight = torch.nn.Parameter(first.weight.detach().repeat(1, 3, 1, 1) / 3)
    first.in_channels = 3
    for module in model.modules():  # embeddings check the channel count of their input
        if isinstance(getattr(module, "num_channels", None), int):
            module.num_channels = 3
    model.config.num_channels = 3
    return model


def rgb_processor(processor: Any) -> Any:
    """A copy of an image processor that normalises RGB: a grayscale one's mean and std repeated for 3 channels."""
    processor = copy.deepcopy(processor)
    if len(processor.image_mean) == 1:
        processor.image_mean, processor.image_std = list(processor.image_mean) * 3, list(processor.image_std) * 3
    return processor
