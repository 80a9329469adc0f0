"""One config, several recipes: pretrain, transfer with any strategy, evaluate, push.

A pipeline file lists stages; each names a recipe and its options, and may start from an
earlier stage's output (recipes/configs/pipeline_*.yaml are examples):

    output_dir: outputs/my-pipeline      # optional; stage outputs go to <output_dir>/<stage name>
    stages:
      - name: pretrain
        recipe: mlm                      # mlm | tsdae | mim | finetune_text | finetune_image | clip
        config: mlm_from_scratch.yaml    # optional: a recipe preset (relative to this file); then
        options: {max_steps: 300}        # these options on top: any option of the recipe
      - name: probe
        recipe: finetune_text
        from: pretrain                   # model_name_or_path: the pretrain stage's output directory
        options: {strategy: linear_probe, push_to_hub: true, hub_model_id: me/probe}

Everything is checked before the first stage runs: the file's keys, each stage's recipe, its
`from` (an earlier stage of the same modality that leaves a full model), every option (by the
recipe's own parser and validation), and every stage's output directory and push target. Each
stage then runs its recipe's `main` on a YAML file of its resolved options, exactly as
`hfssl <recipe> that.yaml` would; the finetune recipes evaluate, and every output's hfssl.json
and card record the lineage back to the first stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from hfssl.api import Result
from hfssl.args import PipelineArguments, RunArguments
from hfssl.options import OptionError, config_file, load_yaml, parse_args
from hfssl.registry import RECIPES, load_recipe

__all__ = ["STAGE_RECIPES", "Pipeline", "Stage", "load_pipeline", "run_pipeline", "summary_text"]

logger = logging.getLogger(__name__)

_STAGE_KEYS = ("name", "recipe", "from", "config", "options")
STAGE_RECIPES = [name for name, r in RECIPES.items() if r.modality is not None]  # a pipeline does not nest pipelines


@dataclass
class Stage:
    """One recipe run of a pipeline, with its options resolved (output_dir, and model_name_or_path when `from` is given)."""

    name: str
    recipe: str
    options: dict[str, Any]
    parent: str | dict[str, str] | None = None  # a clip stage names its text and image towers' stages


@dataclass
class Pipeline:
    path: str
    output_dir: str
    stages: list[Stage]


def load_pipeline(
    argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None, options: dict[str, Any] | None = None
) -> Pipeline:
    """Read `pipeline.yaml [--output_dir DIR] [--overwrite_output_dir true]` and check every stage.

    `options` (Python values) override the file and the command line. Raise OptionError naming the stage and key.
    """
    try:
        return _load_pipeline(list(sys.argv[1:] if argv is None else argv), defaults, options)
    except OptionError:
        raise
    except ValueError as err:  # every check here is about the file or its options: exit 2 from a script
        raise OptionError(str(err)) from None


def _load_pipeline(argv: list[str], defaults: dict[str, Any] | None, options: dict[str, Any] | None) -> Pipeline:
    if not argv or argv[0].startswith("-") or not argv[0].endswith((".yaml", ".yml")):
        raise ValueError(
            "Give the pipeline file first: `hfssl run pipeline.yaml [--output_dir DIR]` (see recipes/configs/pipeline_*.yaml)."
        )
    path = config_file(argv.pop(0))  # a file, or a pipeline that ships with hfssl, by name
    raw = load_yaml(path)
    specs = raw.pop("stages", None)
    top_level = [f.name for f in dataclasses.fields(PipelineArguments)]
    unknown = sorted(set(raw) - set(top_level))
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; a pipeline file holds stages, {', '.join(top_level)}."
        )
    (args,) = parse_args((PipelineArguments,), argv, {**(defaults or {}), **raw}, options)
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{path}: `stages` must be a non-empty list of stages, each with a name, a recipe and its options.")
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in specs]
    stages: list[Stage] = []
    for index, spec in enumerate(specs, 1):
        stages.append(_resolve_stage(path, index, spec, stages, names, args))
    _check_output_dirs(path, stages)
    with tempfile.TemporaryDirectory(prefix="hfssl-pipeline-") as folder:
        pushes = [_check_stage(path, stage, folder) for stage in stages]
    repeated = sorted({repo for repo in pushes if repo and pushes.count(repo) > 1})
    if repeated:
        raise ValueError(f"{path}: several stages push to {', '.join(repeated)}; give each a different hub_model_id.")
    return Pipeline(path, args.output_dir, stages)


def _resolve_stage(path: str, index: int, spec: Any, earlier: list[Stage], names: list[Any], args: PipelineArguments) -> Stage:
    """A stage of the file, its `config` preset and `options` merged, its output_dir and `from` resolved."""
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: stage {index} must be a mapping with name, recipe and options, got {spec!r}.")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise ValueError(
            f"{path}: stage {index} needs a `name` made of letters, digits, _ . - (it names the stage's "
            f"output folder), got {name!r}."
        )
    where = f"{path}: stage {name!r}"
    unknown = sorted(set(spec) - set(_STAGE_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; a stage has {', '.join(_STAGE_KEYS)} "
            "(the recipe's options go under `options`)."
        )
    if any(stage.name == name for stage in earlier):
        raise ValueError(f"{where}: an earlier stage has the same name; stage names must be unique.")
    recipe = spec.get("recipe")
    if recipe not in STAGE_RECIPES:
        raise ValueError(f"{where}: `recipe` must be one of {', '.join(STAGE_RECIPES)}, got {recipe!r}.")
    options: dict[str, Any] = {}
    if spec.get("config") is not None:
        preset = Path(path).parent / str(spec["config"])
        if not preset.is_file():
            raise ValueError(
                f"{where}: `config` {spec['config']} does not exist (a relative path starts at the pipeline file's folder)."
            )
        options.update(load_yaml(str(preset)))
    given = spec.get("options") or {}
    if not isinstance(given, dict):
        raise ValueError(f"{where}: `options` must be a mapping of option: value, got {given!r}.")
    options.update(given)
    parent = spec.get("from")
    if parent is not None:
        # clip joins two towers: `from: {text: stage, image: stage}`; every other recipe starts from one model
        wanted = {"text": "text", "image": "image"} if RECIPES[recipe].modality == "vision-text" else None
        if wanted is not None and (not isinstance(parent, dict) or not parent or set(parent) - set(wanted)):
            raise ValueError(
                f"{where}: {recipe} starts from two towers: `from: {{text: <stage>, image: <stage>}}` (either or both)."
            )
        if wanted is None and not isinstance(parent, str):
            raise ValueError(f"{where}: `from` names one earlier stage, got {parent!r}.")
        for tower, stage_name in parent.items() if wanted is not None else [(None, parent)]:
            option = f"{tower}_model_name_or_path" if tower else "model_name_or_path"
            source = _source_stage(where, stage_name, name, earlier, names)
            if option in options:
                raise ValueError(f"{where}: give either `from: {stage_name}` or the option {option}, not both.")
            source_modality, modality = RECIPES[source.recipe].modality, wanted[tower] if tower else RECIPES[recipe].modality
            if source_modality != modality:
                raise ValueError(
                    f"{where}: `from: {stage_name}` is an output of {source.recipe} (modality: {source_modality}), "
                    f"but {recipe} {'takes its ' + tower + ' tower there' if tower else 'works on ' + str(modality)}."
                )
            if source.options.get("strategy") == "lora":
                raise ValueError(
                    f"{where}: `from: {stage_name}` writes a LoRA adapter, not a model to start from; start from "
                    f"the stage {stage_name} started from, or give {stage_name} another strategy."
                )
            options[option] = source.options["output_dir"]
    options.setdefault("output_dir", str(Path(args.output_dir) / name))
    if args.overwrite_output_dir:
        options["overwrite_output_dir"] = True
    return Stage(name, recipe, options, parent)


def _source_stage(where: str, parent: Any, name: Any, earlier: list[Stage], names: list[Any]) -> Stage:
    """The earlier stage `from` names; ValueError naming the stages that run before this one otherwise."""
    source = next((stage for stage in earlier if stage.name == parent), None)
    if source is None:
        known = ", ".join(s.name for s in earlier) or "none"
        problem = "the stage itself" if parent == name else "a later stage" if parent in names else "no stage"
        raise ValueError(
            f"{where}: `from: {parent}` names {problem}; a stage starts from one that runs before it (here: {known})."
        )
    return source


def _check_output_dirs(path: str, stages: list[Stage]) -> None:
    seen: dict[Path, str] = {}
    for stage in stages:
        folder = Path(stage.options["output_dir"]).resolve()
        if folder in seen:
            raise ValueError(
                f"{path}: stages {seen[folder]!r} and {stage.name!r} have the same output_dir {stage.options['output_dir']}."
            )
        seen[folder] = stage.name


def _stage_file(stage: Stage, folder: str) -> str:
    """The stage's resolved options as a recipe YAML file: what `hfssl <recipe> FILE` reads."""
    path = Path(folder) / f"{stage.name}.yaml"
    path.write_text(f"# hfssl {stage.recipe} {path.name}\n" + yaml.safe_dump(stage.options, sort_keys=False), encoding="utf-8")
    return str(path)


def _check_stage(path: str, stage: Stage, folder: str) -> str | None:
    """Parse and validate the stage's options as its recipe will, and check its output dir; return the repo it pushes to."""
    from hfssl.hub import take_push_request
    from hfssl.outputs import prepare_output_dir, resolve_resume

    recipe = load_recipe(stage.recipe)
    where = f"{path}: stage {stage.name!r} ({stage.recipe})"
    known = {f.name for t in recipe.OPTION_TYPES for f in dataclasses.fields(t) if f.init}
    for key in stage.options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{where}: unknown option {key!r}{hint}. `hfssl options {stage.recipe}` lists the recipe's options.")
    try:
        parsed = parse_args(recipe.OPTION_TYPES, [_stage_file(stage, folder)], recipe.DEFAULTS)
        run_args = next(p for p in parsed if isinstance(p, RunArguments))
        prepare_output_dir(run_args, resolve_resume(run_args))
        push = take_push_request(run_args)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return push.repo_id if push else None


def run_pipeline(pipeline: Pipeline) -> dict[str, Result]:
    """Run every stage in order; return each stage's result (output dir, final metrics) by stage name."""
    import torch.distributed as dist

    from hfssl.runtime import setup_logging

    # Under `accelerate launch` the process group starts with stage 1's Trainer (starting accelerate's state
    # here, before the Trainer sets it up for CPU or GPU, would leave every process thinking it is alone).
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(
        SimpleNamespace(process_index=rank, log_level="passive", log_level_replica="warning")
    )  # as each recipe does, so stage 1's log line shows too
    if rank == 0:
        out = Path(pipeline.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        resolved = [
            {"name": s.name, "recipe": s.recipe, **({"from": s.parent} if s.parent else {}), "options": s.options}
            for s in pipeline.stages
        ]
        (out / "pipeline.yaml").write_text(
            f"# resolved from {pipeline.path}\n" + yaml.safe_dump({"stages": resolved}, sort_keys=False), encoding="utf-8"
        )
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="hfssl-pipeline-") as folder:
        for index, stage in enumerate(pipeline.stages, 1):
            logger.info(
                "Pipeline stage %d of %d: %s (%s) -> %s",
                index,
                len(pipeline.stages),
                stage.name,
                stage.recipe,
                stage.options["output_dir"],
            )
            result = load_recipe(stage.recipe).main([_stage_file(stage, folder)])
            seeds = result.fit.seed_results if result.fit is not None else {}
            result.metrics = {**result.metrics, **{k: v for k, v in seeds.items() if not isinstance(v, (dict, list))}}
            results[stage.name] = result
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # the next stage reads this output, which the main process finishes writing
    return results


def summary_text(pipeline: Pipeline, results: dict[str, Result]) -> str:
    """The final human summary: one line per stage with its headline score and output directory."""
    lines = [f"hfssl pipeline {pipeline.path}: {len(pipeline.stages)} stages"]
    for stage in pipeline.stages:
        key, label = RECIPES[stage.recipe].headline
        value = results[stage.name].metrics.get(key) if stage.name in results else None
        score = f"{label} {value:.3f}" if isinstance(value, (int, float)) else "no score"
        parents = ", ".join(f"{k}: {v}" for k, v in stage.parent.items()) if isinstance(stage.parent, dict) else stage.parent
        start = f" (from {parents})" if parents else ""
        lines.append(f"  {stage.name}: {stage.recipe}{start}, {score} -> {stage.options['output_dir']}")
    return "\n".join(lines)
