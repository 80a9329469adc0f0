"""Users find every recipe from the README, and every recipe option in its generated reference page."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import TrainingArguments

from conftest import ROOT, load_recipe

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_option_is_documented(name):
    readme = (ROOT / "README.md").read_text()
    assert f"recipes/{name}.py" in readme
    assert f"docs/recipes/{name}.md" in readme and f"docs/options/{name}.md" in readme
    page = (ROOT / "docs" / "options" / f"{name}.md").read_text()  # tests/test_docs.py checks it matches the code
    recipe = load_recipe(name)
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    missing = [
        f.name
        for t in recipe.OPTION_TYPES
        for f in dataclasses.fields(t)
        if f.init and f.name not in inherited and f"`--{f.name}`" not in page
    ]
    hint = "give them help text (metadata={'help': ...})"
    assert not missing, f"`hfssl options {name}` does not list these {name} options; {hint}: {missing}"
