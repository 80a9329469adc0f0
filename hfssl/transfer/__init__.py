"""Transfer of pretrained encoders to labeled tasks: strategies (full, lora, linear_probe, freeze, lp_ft),
optimisation aids (layer-wise LR decay, L2-SP), classifier loading, and the shared train / score / save run."""

from hfssl.transfer.strategies import STRATEGIES, Layout, count_parameters, find_layout

__all__ = ["STRATEGIES", "Layout", "count_parameters", "find_layout"]
