"""The recipe registry: one entry per recipe file, each entry loadable, and a wrong name answered helpfully."""

import inspect

import pytest

from conftest import ROOT
from hfssl.api import Result
from hfssl.errors import OptionError
from hfssl.registry import RECIPES, load_recipe, recipe


def test_every_recipe_file_has_one_entry_and_every_entry_a_file():
    files = sorted(p.stem for p in (ROOT / "recipes").glob("*.py") if not p.stem.startswith("_"))
    assert files == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_entry_loads_a_recipe_with_the_shared_signature(name):
    module = load_recipe(name)
    assert module.__name__ == RECIPES[name].module
    signature = inspect.signature(module.main)
    assert list(signature.parameters) == ["argv", "dataset", "options"]
    assert signature.return_annotation in (Result, "Result")
    assert module.OPTION_TYPES and isinstance(module.DEFAULTS, dict)
    entry = RECIPES[name]
    assert (entry.modality is None) == (name == "pipeline")
    if entry.modality is not None:  # what pipelines and cards report about a stage
        assert entry.headline and entry.card_metrics
        assert entry.headline[0] in {key for key, _, _ in entry.card_metrics}


def test_a_wrong_name_suggests_the_closest_recipe():
    assert recipe("finetune-text") is RECIPES["finetune_text"]
    with pytest.raises(OptionError, match=r"no recipe 'mlmm'\. Did you mean 'mlm'\?"):
        recipe("mlmm")
