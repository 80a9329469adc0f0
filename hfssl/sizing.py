"""The model's size from the pretraining budget: the largest preset the budget trains well.

Cramming (Geiping & Goldstein 2023) fixes the compute and derives the model from it. hfssl does the same for a
from-scratch encoder when the user names no size: a preset qualifies when the tokens the budget buys it reach
TOKENS_PER_PARAMETER x its non-embedding parameters (the compute-optimal ratio of Hoffmann et al. 2022, about 20),
counting at most MAX_EPOCHS passes over the corpus (Muennighoff et al. 2023: repeated tokens are worth nearly as
much as new ones for about 4 epochs, then less and less). The smallest preset is the floor.

What a budget buys is measured, not guessed: a few optimizer steps of the candidate on random tokens, at the run's
batch shape, precision, device and masking rate (the sparse MLM head included). The candidates are tried from the
smallest up; a larger one is measured only when even an optimistic bound on its speed (the last measured speed
scaled by the FLOP ratio, times SPEEDUP_BOUND for better hardware use) could qualify it, so on a laptop CPU the
probe costs a few seconds. A token budget needs no probe.

Hand-written: transformers and accelerate size nothing from a budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["MAX_EPOCHS", "TOKENS_PER_PARAMETER", "Sizing", "choose_size", "flops_per_token", "measure_tokens_per_second"]

logger = logging.getLogger(__name__)

TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022 (Chinchilla): compute-optimal tokens per parameter
MAX_EPOCHS = 4  # Muennighoff et al. 2023: up to ~4 epochs of repeated data are worth about as much as new data
SPEEDUP_BOUND = 4.0  # a larger model uses the hardware better per FLOP; never by more than this on the probed sizes


def non_embedding_parameters(config: Any) -> int:
    """Parameters of the encoder's layers (embeddings and heads left out, as in the scaling-law papers)."""
    hidden, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    glu = 3 if getattr(config, "model_type", "") == "modernbert" else 2  # GeGLU: two input projections and one output
    return layers * (4 * hidden * hidden + glu * hidden * inner)


def flops_per_token(config: Any, seq_len: int, vocab_size: int, mask_rate: float) -> float:
    """Training FLOPs per token: 6 N (forward and backward, Kaplan et al. 2020), attention's 12 L T d, and the sparse
    MLM head at the masked share of the tokens."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    return 6 * non_embedding_parameters(config) + 12 * layers * seq_len * hidden + 6 * mask_rate * hidden * vocab_size


@dataclass
class Sizing:
    """The chosen preset and, per preset considered, the tokens the budget buys it (`bound`: an upper bound, not
    probed) and those it needs."""

    preset: str
    considered: dict[str, dict[str, float]]

    def describe(self) -> str:
        parts = []
        for name, row in self.considered.items():
            speed = f", {row['tokens_per_second']:,.0f} tokens/s measured" if row.get("tokens_per_second") else ""
            most = "at most " if row.get("bound") else ""
            parts.append(f"{name}: {most}{row['tokens'] / 1e6:.1f}M of {row['needed'] / 1e6:.1f}M tokens{speed}")
        return "; ".join(parts)


def choose_size(
    candidates: Sequence[tuple[str, Any]],
    *,
    seconds: float | None,
    tokens: int | None,
    corpus_tokens: int | None,
    seq_len: int,
    vocab_size: int,
    mask_rate: float,
    measure: Callable[[Any], float] | None = None,
) -> Sizing:
    """The largest of `candidates` ((name, config), smallest first) that the budget trains to TOKENS_PER_PARAMETER
    tokens per parameter, within MAX_EPOCHS of `corpus_tokens` (None: unknown, as when streaming). The budget is
    `seconds` of training (converted through `measure`: config -> tokens/s), `tokens`, or both: the smaller holds."""
    if seconds is None and tokens is None:
        raise ValueError("choose_size needs a budget: seconds, tokens or both (whichever buys fewer tokens holds).")
    chosen, considered = candidates[0][0], {}
    measured: tuple[float, float] | None = None  # (tokens/s, FLOPs per token) of the last probed candidate
    for name, config in candidates:
        needed = TOKENS_PER_PARAMETER * non_embedding_parameters(config)
        data = math.inf if corpus_tokens is None else MAX_EPOCHS * corpus_tokens
        cost = flops_per_token(config, seq_len, vocab_size, mask_rate)
        speed, bought = None, math.inf if tokens is None else float(tokens)
        if seconds is not None and min(bought, data) >= needed:
            if measured is not None:  # could this one qualify at all? If not, no probe (and no larger one either)
                bound = measured[0] * measured[1] / cost * SPEEDUP_BOUND
                if min(bound * seconds, bought, data) < needed:
                    considered[name] = {"tokens": min(bound * seconds, bought, data), "needed": float(needed), "bound": True}
                    break
            speed = measure(config)
            measured = (speed, cost)
            bought = min(bought, speed * seconds)
        considered[name] = {"tokens": min(bought, data), "needed": float(needed)}
        if speed:
            considered[name]["tokens_per_second"] = speed
        if min(bought, data) < needed:
            break
        chosen = name
    return Sizing(chosen, considered)


def measure_tokens_per_second(
    config: Any,
    *,
    batch_size: int,
    seq_len: int,
    mask_rate: float,
    device: torch.device | str,
    bf16: bool,
    steps: int = 3,
    warmup: int = 2,
) -> float:
    """Training tokens per second of a fresh masked LM of `config` on random tokens, as the recipe trains it: the
    fastest attention for the device, bf16 autocast where the run uses it, the sparse MLM head, AdamW."""
    from transformers import AutoModelForMaskedLM

    from hfssl.models import use_fast_attention
    from hfssl.pretext.masked_tokens import sparse_head

    model = AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").to(device).train()
    use_fast_attention(model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(8, config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
    masked = (torch.rand(batch_size, seq_len, generator=generator) < mask_rate).to(device)
    device_type = torch.device(device).type
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16), sparse_head(model, masked) as is_sparse:
            logits = model(input_ids=ids).logits
        logits = logits if is_sparse else logits[masked]
        F.cross_entropy(logits.float(), ids[masked]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device_type == "cuda":
        torch.cuda.synchronize()
    return batch_size * seq_len * steps / (time.perf_counter() - start)
