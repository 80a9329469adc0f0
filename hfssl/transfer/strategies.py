"""Transfer strategies: which weights of a pretrained classifier train, registered in one place.

A strategy is a tuple of stages, each a function `(model, args, layout) -> model` that sets
`requires_grad` (or, for LoRA, wraps the model with peft). `lp_ft` has two stages, a linear
probe and then full fine-tuning (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution").

The head is what the checkpoint did not bring: the modules outside the backbone
(`model.base_model`), plus any backbone weight initialised fresh at load time (BERT's pooler,
when the checkpoint is a masked-LM). It trains in every strategy: freezing a random layer
only adds a random projection in front of the classifier.

Neither transformers nor peft says which modules of a model are its repeated blocks, so
`find_layout` does (the largest `nn.ModuleList` of the backbone): `freeze` and
`--layer_decay` count layers with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

__all__ = ["STRATEGIES", "Layout", "count_parameters", "find_layout", "layer_ids", "lora_target_modules"]

# What LoRA wraps when --lora_target_modules is not given: peft's table for the model type when
# its names exist in the model, else the first of these query/value projection names it has
# (module names change between transformers versions: ViT's query/value became q_proj/v_proj),
# else, for CNNs, their convolutions.
_ATTENTION_PROJECTIONS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("Wqkv",), ("qkv",), ("query_key_value",))
_CNN_TARGETS = {"resnet": ["convolution"], "convnext": ["pwconv1", "pwconv2"], "regnet": ["convolution"]}
# Module types peft's LoRA can wrap.
_LORA_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


@dataclass
class Layout:
    """Where a classifier's parts are: its head modules and its stack of blocks (None when it has none)."""

    head_modules: list[str]  # dotted module names, e.g. ["classifier", "bert.pooler.dense"]
    blocks: str | None  # dotted name of the nn.ModuleList of blocks, e.g. "bert.encoder.layer"
    depth: int  # number of blocks

    def is_head(self, name: str) -> bool:
        """Whether parameter (or module) `name` belongs to the head; works on peft-wrapped names too."""
        return any(re.search(rf"(^|\.){re.escape(h)}(\.|$)", name) for h in self.head_modules)


def find_layout(model: PreTrainedModel, fresh: Iterable[str]) -> Layout:
    """The head (outside `model.base_model`, plus weights `fresh` from init) and the backbone's blocks."""
    prefix = model.base_model_prefix
    if model.base_model is model:
        raise ValueError(f"{type(model).__name__} has no separate backbone and head, so it cannot be used for transfer.")
    head = [name for name, child in model.named_children() if name != prefix and any(True for _ in child.parameters())]
    head += sorted({n.rsplit(".", 1)[0] for n in fresh if n.startswith(prefix + ".")})
    lists = [(name, m) for name, m in model.base_model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return Layout(head, None, 0)
    name, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return Layout(head, f"{prefix}.{name}", len(blocks))


def layer_ids(model: nn.Module, layout: Layout) -> dict[str, int]:
    """Parameter name -> 0 (embeddings: all before the blocks), l (block l, 1-based), depth + 1 (after them, the head).

    "Before" and "after" follow the order in which modules are registered, which is the order
    of the forward pass in transformers' models (embeddings, encoder, final norm / pooler, head).
    """
    if layout.blocks is None:
        raise ValueError(f"{type(model).__name__} has no stack of layers (nn.ModuleList) to count layers in.")
    block = re.compile(rf"(?:^|\.){re.escape(layout.blocks)}\.(\d+)\.")
    ids, after_blocks = {}, False
    for name, _ in model.named_parameters():
        match = block.search(name)
        if layout.is_head(name):
            ids[name] = layout.depth + 1
        elif match:
            ids[name], after_blocks = int(match.group(1)) + 1, True
        else:
            ids[name] = layout.depth + 1 if after_blocks else 0
    return ids


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _train_only(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
    return model


def full(model: PreTrainedModel, args: Any, layout: Layout) -> nn.Module:
    """Every weight trains."""
    return _train_only(model, lambda name: True)


def linear_probe(model: PreTrainedModel, args: Any, layout: Layout) -> nn.Module:
    """Only the head trains; the backbone's features are used as they are."""
    return _train_only(model, layout.is_head)


def freeze(model: PreTrainedModel, args: Any, layout: Layout) -> nn.Module:
    """The embeddings and the bottom --freeze_layers blocks stay as pretrained; the rest trains."""
    if layout.blocks is None or args.freeze_layers > layout.depth:
        raise ValueError(
            f"--freeze_layers {args.freeze_layers} is larger than the depth of {type(model).__name__} "
            f"({layout.depth} layers in {layout.blocks}). Pass a value from 0 to {layout.depth}."
        )
    ids = layer_ids(model, layout)
    return _train_only(model, lambda name: ids[name] > args.freeze_layers)


def lora_target_modules(model: PreTrainedModel, layout: Layout, requested: str | None) -> list[str]:
    """The module names LoRA wraps: --lora_target_modules, or the architecture's attention projections.

    Raises a ValueError listing the backbone's candidate names when a name matches no wrappable module.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = model.config.model_type
    wrappable = [n for n, m in model.named_modules() if isinstance(m, _LORA_TYPES) and not layout.is_head(n)]
    candidates = sorted({n.rsplit(".", 1)[-1] for n in wrappable})
    if requested:
        targets = [t.strip() for t in requested.split(",") if t.strip()]
    else:
        known = [PEFT_TARGETS[model_type]] if isinstance(PEFT_TARGETS.get(model_type), list) else []
        targets = next(
            (list(names) for names in (*known, *_ATTENTION_PROJECTIONS) if set(names) <= set(candidates)),
            _CNN_TARGETS.get(model_type),
        )
    if not targets:
        raise ValueError(
            f"--strategy lora: hfssl does not know which modules of a {model_type!r} model to adapt. "
            f"Pass --lora_target_modules with some of its module names: {', '.join(candidates)}."
        )
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in wrappable)]
    if unmatched:
        raise ValueError(
            f"--strategy lora: no linear/conv/embedding module of the {model_type!r} backbone is named "
            f"{', '.join(unmatched)}. Candidate --lora_target_modules names: {', '.join(candidates)}."
        )
    return targets


def lora(model: PreTrainedModel, args: Any, layout: Layout) -> nn.Module:
    """Low-rank adapters on the attention projections (peft), plus the head as a fully trained module."""
    from peft import LoraConfig, get_peft_model

    is_text = type(model).__name__ in (
        *MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values(),
        "MeanPooledForSequenceClassification",
    )
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(model, layout, args.lora_target_modules),
        modules_to_save=layout.head_modules,
        task_type="SEQ_CLS" if is_text else None,  # lets AutoPeftModelForSequenceClassification load it
    )
    return get_peft_model(model, config)


STRATEGIES: dict[str, tuple[Callable[[PreTrainedModel, Any, Layout], nn.Module], ...]] = {
    "full": (full,),
    "lora": (lora,),
    "linear_probe": (linear_probe,),
    "freeze": (freeze,),
    "lp_ft": (linear_probe, full),
}
