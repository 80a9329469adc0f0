"""hfssl's recipes: thin scripts over the hfssl package, one per pretext or transfer task.

In a checkout they run as files (`accelerate launch recipes/mlm.py`); installed, the same files are the
package `hfssl.recipes` (`hfssl mlm`, `accelerate launch -m hfssl.recipes.mlm`), and their YAML presets
ship beside them in `configs/` (`hfssl mlm mlm_from_scratch.yaml` finds a packaged preset by name).
"""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
