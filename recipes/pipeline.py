"""Chain recipes in one config: pretrain (mlm, mim), transfer with any strategy, evaluate, push.

    hfssl run pipeline.yaml [--output_dir DIR] [--overwrite_output_dir true]
    accelerate launch recipes/pipeline.py pipeline.yaml [...]

A stage names a recipe and its options, and `from: <stage>` starts it from an earlier stage's
output; each stage writes to <output_dir>/<stage name>. The file format is in hfssl/pipeline.py;
recipes/configs/pipeline_text.yaml and pipeline_images.yaml are examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState

from hfssl.api import Result, script
from hfssl.args import OptionError, PipelineArguments, default_output_dir
from hfssl.pipeline import load_pipeline, run_pipeline, summary_text

OPTION_TYPES = (PipelineArguments,)
DEFAULTS = dict(output_dir=default_output_dir("pipeline"))


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """`hfssl run pipeline.yaml`, or `hfssl.run("pipeline", config="pipeline.yaml", output_dir=...)` from Python."""
    if dataset is not None:
        raise OptionError("dataset=: a pipeline's stages name their own data (in the pipeline file); run a recipe with it.")
    pipeline = load_pipeline(argv, DEFAULTS, options)  # every stage's options and output dir are checked before any stage runs
    results = run_pipeline(pipeline)
    if PartialState().is_main_process:
        print("\n" + summary_text(pipeline, results))
    return Result("pipeline", Path(pipeline.output_dir), {}, stages=results)


if __name__ == "__main__":
    script(main)
