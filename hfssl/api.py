"""hfssl from Python: run a recipe on an in-memory dataset, get its metrics and output back.

    import hfssl
    result = hfssl.run("finetune_text", dataset=my_dataset_dict, strategy="lora", num_train_epochs=3)
    result.metrics["eval_accuracy"], result.output_dir

Every recipe (`recipes/<name>.py`, the package `hfssl.recipes`) is one function,
`main(argv=None, *, dataset=None, **options) -> Result`; the command line (`hfssl <recipe>`,
`accelerate launch recipes/<name>.py`) and this API are two doors to it. `script` is what a
recipe's `__main__` and the `hfssl` command run: it turns hfssl's documented errors into one line
on stderr and an exit status (2 for wrong options, as argparse does; 1 for a run that failed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Result", "run", "script"]


@dataclass
class Result:
    """What a recipe run produced: where its output is and what it measured."""

    recipe: str
    output_dir: Path
    metrics: dict[str, Any]  # the numbers of all_results.json / the card (eval_* scores, train_* figures)
    fit: Any = None  # transfer recipes: the trained classifier (`fit.model`), its trainer and held-out predictions
    stages: dict[str, Result] = field(default_factory=dict)  # pipeline: each stage's own result, by stage name
    pushed_to: str | None = None  # the repo URL when --push_to_hub pushed the output


def run(recipe: str, dataset: Any = None, config: str | os.PathLike | None = None, **options: Any) -> Result:
    """Run `recipe` (mlm, mim, tsdae, finetune_text, finetune_image, pipeline) in this process.

    dataset: a `datasets.Dataset` (split into train / validation by the recipe, as a single file would be)
        or a `DatasetDict` with a "train" and, optionally, a "validation" or "test" split.
    config: a YAML file of options, or the name of a preset that ships with hfssl (`mlm_from_scratch.yaml`).
    options: any of the recipe's options (`hfssl options <recipe>`) as Python values; they override `config`.
    Wrong options raise `hfssl.args.OptionError` (a ValueError) before any data is read.
    """
    from hfssl.registry import load_recipe

    return load_recipe(recipe).main([os.fspath(config)] if config is not None else [], dataset=dataset, **options)


def _debug_requested(argv: list[str]) -> bool:
    """--log_level debug on the command line (the options may not have parsed, so read it raw)."""
    for i, token in enumerate(argv):
        if token == "--log_level" and i + 1 < len(argv) and argv[i + 1].lower() == "debug":
            return True
        if token.lower() == "--log_level=debug":
            return True
    return False


def script(main: Callable[..., Any], argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run a recipe's `main` as a command: errors hfssl documents print one line and set the exit status.

    Wrong options (`OptionError`) exit 2 before any compute; a run that fails for a reason hfssl checks
    (unreadable data, an output directory it must not overwrite, a failed push) exits 1 with its message.
    Other exceptions keep their traceback. `--log_level debug` shows the traceback of every error.
    """
    from hfssl.errors import OptionError, PushError

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).name
    try:
        main(argv)
    except (OptionError, PushError, ValueError, FileNotFoundError) as err:
        if _debug_requested(argv):
            raise
        status = 2 if isinstance(err, OptionError) else 1
        print(f"{prog}: error: {err}", file=sys.stderr)
        if status == 1 and not isinstance(err, PushError):
            print(f"{prog}: (add --log_level debug for the traceback)", file=sys.stderr)
        raise SystemExit(status) from None
