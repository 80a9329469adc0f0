"""Optimisation aids for transfer that neither transformers nor torch provide.

- Layer-wise learning-rate decay (Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT): lower
  layers, whose features are most general, move less. Layer l of L trains at
  lr x decay^(L + 1 - l); the embeddings (l = 0) lowest, the head (l = L + 1) at lr.
- L2-SP (Li et al. 2018, "Explicit Inductive Bias for Transfer Learning with Convolutional
  Networks"): alpha / 2 x ||w - w0||^2 pulls the pretrained weights toward their starting
  values w0 instead of toward zero, as weight decay would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hfssl.transfer.strategies import Layout, layer_ids

__all__ = ["L2SP", "layer_decay_groups"]


def layer_decay_groups(
    model: nn.Module, layout: Layout, lr: float, decay: float, weight_decay: float, decay_names: set[str] | list[str]
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable weights: one per (layer, weight decay on/off), each with its own lr."""
    ids = layer_ids(model, layout)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decays = ids[name], name in decay_names
        group = groups.setdefault(
            (layer, decays),
            {
                "params": [],
                "lr": lr * decay ** (layout.depth + 1 - layer),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


class L2SP:
    """The L2-SP penalty over the trainable weights the checkpoint provided (not the fresh head)."""

    def __init__(self, model: nn.Module, layout: Layout, alpha: float, fresh: set[str]) -> None:
        self.alpha = alpha
        self.start = {
            name: p.detach().clone()
            for name, p in model.named_parameters()
            if p.requires_grad and not layout.is_head(name) and name not in fresh
        }

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """alpha / 2 x sum over the pretrained weights of ||w - w0||^2 (a scalar tensor in the graph)."""
        params = dict(model.named_parameters())
        total = sum(((params[name] - w0.to(params[name].device)) ** 2).sum() for name, w0 in self.start.items())
        return 0.5 * self.alpha * total
