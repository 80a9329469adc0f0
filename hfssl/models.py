"""Model size presets and building/loading of the encoders hfssl pretrains.

Presets follow the BERT miniatures of Turc et al. (2019), "Well-Read Students Learn Better"
(tiny 2x128, mini 4x256, small 4x512, base 12x768).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig, PreTrainedModel

__all__ = ["TEXT_PRESETS", "build_masked_lm", "check_model_path", "load_config", "mlm_config", "usable_positions"]

logger = logging.getLogger(__name__)

TEXT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


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


def _apply_overrides(config: Any, overrides: str | None) -> None:
    if not overrides:
        return
    try:
        config.update_from_string(overrides)
    except ValueError as err:
        raise ValueError(f"--config_overrides {overrides!r}: {err}. Use 'key=value,key=value' with config field names.") from None


def mlm_config(
    model_name_or_path: str | None,
    preset: str | None = "tiny",
    config_overrides: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> Any:
    """The config of the model to pretrain: a checkpoint's, or a BERT preset (vocab size set later)."""
    if model_name_or_path is not None:
        check_model_path(model_name_or_path)
        return load_config(model_name_or_path, trust_remote_code, cache_dir)
    config = BertConfig(**TEXT_PRESETS[preset or "tiny"])
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
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
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
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but {model_name_or_path} has embeddings for "
            f"{model.get_input_embeddings().num_embeddings}: use the model's own tokenizer (drop --tokenizer_name)."
        )
    return model


def load_config(model_name_or_path: str, trust_remote_code: bool = False, cache_dir: str | None = None) -> Any:
    """Load a config, turning 'not found' into an error that names the option."""
    try:
        return AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model_name_or_path {model_name_or_path}: cannot load a model config ({err}).") from None

