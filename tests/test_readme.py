"""The README is where users learn the options: every recipe option must be documented there."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import TrainingArguments

from conftest import ROOT, load_recipe

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_option_is_in_the_readme(name):
    readme = (ROOT / "README.md").read_text()
    assert f"recipes/{name}.py" in readme
    recipe = load_recipe(name)
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    missing = [
        f.name
        for t in recipe.OPTION_TYPES
        for f in dataclasses.fields(t)
        if f.init and f.name not in inherited and f"`--{f.name}`" not in readme
    ]
    assert not missing, f"document these {name} options in README.md (see `hfssl options {name}`): {missing}"
