"""The `hfssl` console script: run a recipe, print its options, or re-render a card.

    hfssl mlm [config.yaml] [--key value ...]      same as: accelerate launch recipes/mlm.py ...
    hfssl options mlm                              the recipe's options as a Markdown table
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["main"]

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str) -> ModuleType:
    """Import recipes/<name>.py, the readable script every command runs."""
    path = RECIPES_DIR / f"{name.replace('-', '_')}.py"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.py")) if RECIPES_DIR.is_dir() else []
        raise SystemExit(f"hfssl: no recipe {name!r} (known: {', '.join(known) or 'none: install hfssl from a checkout'}).")
    spec = importlib.util.spec_from_file_location(f"hfssl_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command == "options":
        from transformers import TrainingArguments

        from hfssl.args import options_table

        recipe = load_recipe(rest[0] if rest else "mlm")
        print(options_table(recipe.OPTION_TYPES, skip=TrainingArguments))
        print("\nEvery transformers TrainingArguments option (--learning_rate, --max_steps, --bf16, ...) passes through.")
        return
    load_recipe(command).main(rest)


if __name__ == "__main__":
    main()
