"""Run a recipe under accelerate's FSDP on CPU processes: `accelerate launch ... tests/fsdp_on_cpu.py RECIPE [args]`.

accelerate enables FSDP only on accelerators: `AcceleratorState.__init__` turns an FSDP launch into
`DistributedType.FSDP` only inside its branch for MULTI_GPU / MULTI_XPU / MULTI_NPU / ... processes, and processes
on the CPU are MULTI_CPU (accelerate/state.py, `_prepare_backend` and the `elif self.distributed_type in [...]`
branch), so they silently train with DDP. torch's FSDP2 (`fully_shard`) itself runs on CPU processes over gloo.
This launcher makes that one decision the other way, then runs the recipe unchanged: sharding, the gathers,
the sharded checkpoints and the final save are accelerate's, transformers' and hfssl's own code.
"""

from __future__ import annotations

import runpy
import sys

from accelerate.state import AcceleratorState, DistributedType, PartialState

_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # as accelerate does for GPU processes; PartialState's copy is what later AcceleratorState() calls read
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


if __name__ == "__main__":
    AcceleratorState.__init__ = _fsdp_on_cpu
    recipe = sys.argv.pop(1)
    sys.argv[0] = recipe
    runpy.run_path(recipe, run_name="__main__")
