"""Chain recipes in one config: pretrain (mlm, mim), transfer with any strategy, evaluate, push.

    hfssl run pipeline.yaml [--output_dir DIR] [--overwrite_output_dir true]
    accelerate launch recipes/pipeline.py pipeline.yaml [...]

A stage names a recipe and its options, and `from: <stage>` starts it from an earlier stage's
output; each stage writes to <output_dir>/<stage name>. The file format is in hfssl/pipeline.py;
recipes/configs/pipeline_text.yaml and pipeline_images.yaml are examples.
"""

from __future__ import annotations

from typing import Any

from accelerate import PartialState

from hfssl.args import PipelineArguments, default_output_dir
from hfssl.pipeline import load_pipeline, run_pipeline, summary_text

OPTION_TYPES = (PipelineArguments,)
DEFAULTS = dict(output_dir=default_output_dir("pipeline"))


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    pipeline = load_pipeline(argv, DEFAULTS)  # every stage's options and output dir are checked before any stage runs
    results = run_pipeline(pipeline)
    if PartialState().is_main_process:
        print("\n" + summary_text(pipeline, results))
    return results


if __name__ == "__main__":
    main()
