"""bf16 weights with fp32 master weights: the model computes in bf16 throughout, the optimizer updates fp32 copies.

Autocast keeps fp32 weights and casts at every eligible op: on a CPU, where a cast is a full pass
over memory and small models run many small ops, those casts are a large share of a step (about
530 per MAE step of the tiny ViT, 16% of its time). With the model's own parameters in bf16 there
is nothing to cast; the fp32 masters keep the updates exact, as in mixed-precision training
(Micikevicius et al. 2018). Hand-written because neither the Trainer nor accelerate has master
weights outside DeepSpeed/FSDP; the masters are the parameters the optimizer was built on, so any
torch optimizer works unchanged underneath.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["MasterWeightOptimizer", "MasterWeightsMixin", "fp32_weights", "master_weights_apply", "with_master_weights"]


class MasterWeightOptimizer(torch.optim.Optimizer):
    """Wraps `inner` (built on `model`'s fp32 parameters): the model gets bf16 copies, `inner` keeps the fp32 masters.

    step(): master.grad = bf16 grad in fp32; inner.step(); the bf16 copies take the new master values.
    state_dict() carries the masters, so a resumed run continues from the exact fp32 weights.
    restore() puts the fp32 masters back into the model (call it before saving the final model).
    """

    def __init__(self, inner: torch.optim.Optimizer, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self.inner = inner
        managed = {id(p) for group in inner.param_groups for p in group["params"]}
        copies: dict[int, nn.Parameter] = {}  # one copy per master: tied weights stay tied
        self._slots: list[tuple[nn.Module, str, nn.Parameter]] = []
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                # Frozen floating-point parameters (e.g. MAE's fixed sin-cos position embeddings) become bf16 too:
                # an fp32 one would turn the residual stream back to fp32 and meet bf16 layer norms.
                if param is None or not param.is_floating_point():
                    continue
                if id(param) not in copies:
                    copies[id(param)] = nn.Parameter(param.detach().to(dtype), requires_grad=param.requires_grad)
                module._parameters[name] = copies[id(param)]
                self._slots.append((module, name, param))
        self._pairs = [(copies[id(p)], p) for p in dict.fromkeys(p for _, _, p in self._slots) if id(p) in managed]
        self._restored = False
        # The Optimizer base holds no parameters of its own: groups and state are the inner optimizer's.
        self.defaults = inner.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.inner.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.inner.state

    @state.setter
    def state(self, value: Any) -> None:
        self.inner.state = value

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self._restored:
            raise RuntimeError("MasterWeightOptimizer.step() after restore(): the model holds the fp32 masters again.")
        for low, master in self._pairs:
            master.grad = None if low.grad is None else low.grad.to(master.dtype)
        loss = self.inner.step(closure)
        for low, master in self._pairs:
            low.copy_(master)
            master.grad = None  # the fp32 gradients live only for the update
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for low, master in self._pairs:
            low.grad = None
            master.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "masters": [master.detach().clone() for _, master in self._pairs]}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        masters = state_dict["masters"]
        if len(masters) != len(self._pairs):
            raise ValueError(f"optimizer state holds {len(masters)} master weights, the model has {len(self._pairs)}.")
        self.inner.load_state_dict(state_dict["inner"])
        for (low, master), saved in zip(self._pairs, masters):
            master.copy_(saved)
            low.copy_(master)

    def _install(self, params: list[nn.Parameter]) -> None:
        """Put `params` (one per slot, in slot order) into the model's modules."""
        for (module, name, _), param in zip(self._slots, params):
            module._parameters[name] = param

    @contextlib.contextmanager
    def fp32_weights(self) -> Iterator[None]:
        """Within the block the model holds the fp32 masters (for saving a checkpoint); then its bf16 copies again."""
        if self._restored:
            yield
            return
        lows = [module._parameters[name] for module, name, _ in self._slots]
        self._install([master for _, _, master in self._slots])
        try:
            yield
        finally:
            self._install(lows)

    def restore(self) -> None:
        """Give the model its fp32 master parameters back (values as trained); the bf16 copies are dropped."""
        if not self._restored:
            self._install([master for _, _, master in self._slots])
            self.zero_grad()
            self._restored = True


def master_weights_apply(args: Any) -> bool:
    """Whether `--bf16_weights` (None: automatic) gives this run bf16 weights with fp32 masters.

    Automatic: on with bf16 on a CPU in a single process with no gradient accumulation. GPUs cast
    fast (autocast stays); DDP would all-reduce bf16 gradients, accumulation would sum them in bf16,
    and DeepSpeed/FSDP have their own mixed precision.
    """
    requested = getattr(args, "bf16_weights", None)
    suitable = (
        args.bf16
        and args.device.type == "cpu"
        and args.world_size == 1
        and args.gradient_accumulation_steps == 1
        and not args.deepspeed
        and not args.fsdp
    )
    if requested and not suitable:
        raise ValueError(
            "--bf16_weights true needs --bf16 true on a CPU in a single process without gradient accumulation, "
            "DeepSpeed or FSDP; leave it unset to decide automatically."
        )
    return bool(suitable if requested is None else requested)


def with_master_weights(trainer: Any, optimizer: torch.optim.Optimizer, model: nn.Module | None) -> torch.optim.Optimizer:
    """The end of a Trainer's `create_optimizer`: wrap the finished optimizer when the run uses bf16 weights."""
    if isinstance(optimizer, MasterWeightOptimizer) or not master_weights_apply(trainer.args):
        return optimizer
    trainer.optimizer = MasterWeightOptimizer(optimizer, trainer.model if model is None else model)
    logger.info("bf16 weights, fp32 master weights in the optimizer (--bf16_weights; the saved model is fp32)")
    return trainer.optimizer


def _master_optimizer(trainer: Any) -> MasterWeightOptimizer | None:
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return optimizer if isinstance(optimizer, MasterWeightOptimizer) else None


def fp32_weights(trainer: Any) -> contextlib.AbstractContextManager:
    """Within the block the trainer's model holds its fp32 weights (the masters when it trains with bf16 weights)."""
    optimizer = _master_optimizer(trainer)
    return optimizer.fp32_weights() if optimizer is not None else contextlib.nullcontext()


class MasterWeightsMixin:
    """For a Trainer subclass whose `create_optimizer` ends with `with_master_weights(...)`.

    Checkpoints hold the fp32 masters, and after training they go back into the model, so that
    evaluation and the saved model are fp32. (`create_optimizer` is not here: the wrap must come
    after a subclass's own changes to the parameter groups, which name the fp32 parameters.)
    """

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        finally:
            if (optimizer := _master_optimizer(self)) is not None:
                optimizer.restore()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with fp32_weights(self):
            super()._save(output_dir, state_dict)  # type: ignore[misc]
