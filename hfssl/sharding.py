"""FSDP under `accelerate launch`: what hfssl fills in where the accelerate config leaves it open.

- Units: `fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP` without `fsdp_transformer_layer_cls_to_wrap` shards each
  class in the model's `_no_split_modules`, then the input and output embeddings on their own. Where the
  embeddings sit inside one of those classes (ModernBERT's and ViT-MAE's embedding modules), they would be sharded
  twice, which torch refuses ("Invariant encountered: value was None" from `DeviceMesh._concatenate`). hfssl names
  the other classes; the embedding modules join the root unit.
- The final model: with `fsdp_state_dict_type: SHARDED_STATE_DICT` (the right choice for checkpoints: each process
  writes its own shard), the Trainer's `save_model` writes no weights at all. hfssl gathers the whole model to the
  main process for the model a user loads (`gathered_state_dict`); checkpoints stay sharded.
- Work on the main process alone (probes, the reconstruction picture) needs the whole model: `unsharded` gathers it
  there, every process taking part.
- A silent fallback: accelerate runs FSDP only on accelerators (GPU, XPU, NPU, ...); CPU processes launched with an
  FSDP config train with plain data parallelism, which the log says.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any

import torch
from torch import nn

__all__ = ["gathered_state_dict", "prepare_sharding", "shardable_units", "unsharded"]

logger = logging.getLogger(__name__)


def shardable_units(model: nn.Module) -> list[str]:
    """The classes of `model._no_split_modules` present in it that can be FSDP units of their own under accelerate.

    Left out: a class holding the input or output embeddings, which accelerate shards as units of their own (inside
    an outer unit they would be sharded twice, which torch refuses), or a parameter tied to one outside it.
    """
    names = dict.fromkeys(getattr(model, "_no_split_modules", None) or [])
    embeddings = (getattr(model, f"get_{side}_embeddings", lambda: None)() for side in ("input", "output"))
    alone = {id(m) for m in embeddings if m is not None}
    holders: dict[int, list[str]] = defaultdict(list)  # parameter -> every name it has (tied ones have several)
    for name, param in model.named_parameters(remove_duplicate=False):
        holders[id(param)].append(name)
    present, left_out = set(), set()
    for prefix, module in model.named_modules():
        kind = type(module).__name__
        if kind not in names:
            continue
        present.add(kind)
        embeds = any(id(m) in alone for m in module.modules())
        tied = any(not n.startswith(f"{prefix}.") for p in module.parameters() for n in holders[id(p)])
        if embeds or tied:
            left_out.add(kind)
    return [kind for kind in names if kind in present and kind not in left_out]


def prepare_sharding(trainer: Any) -> None:
    """Before the Trainer wraps the model: name the FSDP units where the config left them open; say when an FSDP
    config runs without FSDP."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        logger.warning(
            "The accelerate config asks for FSDP, but accelerate runs FSDP only on accelerators (GPU, XPU, NPU, ...): "
            "these %s processes train with plain data parallelism, each holding the whole model.",
            trainer.args.device.type,
        )
        return
    if not trainer.is_fsdp_enabled:
        return
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = trainer.accelerator.state.fsdp_plugin
    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy or plugin.transformer_cls_names_to_wrap is not None:
        return  # another policy, or the user named the classes
    if not getattr(trainer.model, "_no_split_modules", None):
        return  # the model names no unit classes (a module of several models): nothing to fill in
    units = shardable_units(trainer.model)
    left_out = [kind for kind in getattr(trainer.model, "_no_split_modules", None) or [] if kind not in units]
    plugin.transformer_cls_names_to_wrap = units
    if left_out:
        logger.info(
            "FSDP units: %s and the embeddings (%s left to the root unit: it holds the embeddings or a tied weight; "
            "--fsdp_transformer_layer_cls_to_wrap chooses)",
            ", ".join(units) or "none",
            ", ".join(left_out),
        )


def _fsdp2(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gathered_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP2, the whole model's state dict on the main process (CPU tensors; {} on the others), else None.

    Every process must call it: the gather is collective. Names whose parameter is one tied tensor in the model
    (a masked-LM decoder and the word embeddings) share one tensor here too, so `save_pretrained` stores it once.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not _fsdp2(model):
        return None
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(param), name)
        if kept != name and kept in weights and name in weights:
            weights[name] = weights[kept]
    return weights


def unsharded(model: nn.Module) -> nn.Module | None:
    """`model` itself where FSDP2 does not shard it; under FSDP2, on the main process a plain copy holding the
    gathered weights (on the model's device, in eval mode), None on the others. Every process must call it."""
    weights = gathered_state_dict(model)
    if weights is None:
        return model
    if not weights:  # not the main process
        return None
    from torch.distributed.fsdp import FSDPModule

    plain = next(kind for kind in type(model).__mro__ if not issubclass(kind, FSDPModule))  # FSDP2 subclassed it
    with torch.device(next(model.parameters()).device):
        copy = plain(model.config)
    copy.load_state_dict(weights, strict=True)
    return copy.eval()
