"""Every shipped YAML is loaded and validated (found recursively, so none is forgotten)."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import ROOT, load_recipe
from hfssl.args import parse_args
from hfssl.pipeline import load_pipeline

CONFIGS = sorted((ROOT / "recipes" / "configs").rglob("*.yaml"))
PIPELINE_CONFIGS = [p for p in CONFIGS if p.name.startswith("pipeline")]
RECIPE_CONFIGS = [p for p in CONFIGS if "accelerate" not in p.parts and p not in PIPELINE_CONFIGS]
ACCELERATE_CONFIGS = [p for p in CONFIGS if "accelerate" in p.parts]


def test_configs_exist():
    assert RECIPE_CONFIGS and PIPELINE_CONFIGS and len(ACCELERATE_CONFIGS) >= 3


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: p.name)
def test_recipe_config_parses_and_validates(path, tmp_path):
    first = path.read_text().splitlines()[0]
    match = re.search(r"recipes/(\w+)\.py", first)
    assert first.startswith("#") and match, f"{path.name} must open with the command that runs it"
    recipe = load_recipe(match.group(1))
    parsed = parse_args(recipe.OPTION_TYPES, [str(path), "--output_dir", str(tmp_path / "out")], recipe.DEFAULTS)
    values = {name: getattr(options, name) for options in parsed for name in vars(options)}
    for key, value in yaml.safe_load(path.read_text()).items():  # every setting of the file reaches the run
        got = values[key]
        same = float(got) == float(value) if isinstance(got, (int, float)) and not isinstance(got, bool) else got == value
        assert same or str(got) == str(value), f"{path.name}: {key} is {got!r} in the parsed options, {value!r} in the file"


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)
def test_pipeline_config_validates_every_stage(path, tmp_path):
    assert path.read_text().startswith(f"# hfssl run recipes/configs/{path.name}")
    pipeline = load_pipeline([str(path), "--output_dir", str(tmp_path / "out")])
    assert len(pipeline.stages) >= 2 and all(s.parent == "pretrain" for s in pipeline.stages[1:])
    assert not (tmp_path / "out").exists()  # checking writes nothing


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 2
    assert path.read_text().startswith("# accelerate launch --config_file")
