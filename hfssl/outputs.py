"""Output directories: refuse to overwrite what a user made, resume only complete checkpoints, save atomically.

A finished output is assembled in a hidden staging folder inside `output_dir` and moved into place,
`hfssl.json` last, so a directory without `hfssl.json` is never mistaken for a finished model. This
module imports neither torch nor transformers at import time: the card renderer and the Hub client use it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "RECORD_FILE",
    "STAGING_DIR",
    "parent_lineage",
    "plot_loss_curve",
    "prepare_output_dir",
    "publish_staging",
    "read_record",
    "resolve_resume",
    "save_output",
    "write_json",
]

logger = logging.getLogger(__name__)

RECORD_FILE = "hfssl.json"  # what a run did and measured; written last, so it marks a finished output
STAGING_DIR = ".hfssl-staging"  # final files are assembled here, then moved into place
TRAINER_STATE_FILE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, which the Trainer writes last in a checkpoint
CHECKPOINT_PREFIX = "checkpoint"  # transformers' CHECKPOINT_PREFIX
_MODEL_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: without it, the run died while saving this checkpoint."""
    return (checkpoint / TRAINER_STATE_FILE).is_file()


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The checkpoint-<step> folders in `out`, by step."""
    found = ((re.fullmatch(rf"{CHECKPOINT_PREFIX}-(\d+)", p.name), p) for p in (out.iterdir() if out.is_dir() else ()))
    return sorted((int(m.group(1)), p) for m, p in found if m and p.is_dir())


def resolve_resume(run_args: Any) -> str | None:
    """Turn --resume_from_checkpoint true|PATH into a complete checkpoint's path, or fail clearly."""
    value = run_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "no", "0"):
        return None
    if str(value).lower() in ("true", "yes", "1"):
        out = Path(run_args.output_dir)
        checkpoints = _checkpoints(out)
        complete = [(step, p) for step, p in checkpoints if _complete(p)]
        if not complete:
            found = f" ({', '.join(p.name for _, p in checkpoints)} incomplete: stopped while saving)" if checkpoints else ""
            raise ValueError(
                f"--resume_from_checkpoint true: no complete checkpoint-* folder in {out}{found}. "
                "Give a checkpoint path, or drop the option to start fresh."
            )
        last_step, last = complete[-1]
        skipped = [p.name for step, p in checkpoints if step > last_step]
        if skipped:
            logger.warning("Skipping %s: incomplete (the run was stopped while saving it).", ", ".join(skipped))
        return str(last)
    if not os.path.isdir(value):
        raise ValueError(f"--resume_from_checkpoint {value} is not a checkpoint directory.")
    if not _complete(Path(value)):
        raise ValueError(
            f"--resume_from_checkpoint {value} is not a complete checkpoint (no {TRAINER_STATE_FILE}; a run stopped "
            "while saving it leaves one like this). Give an earlier checkpoint-* folder, or --resume_from_checkpoint true."
        )
    return value


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def prepare_output_dir(run_args: Any, resume: str | None) -> None:
    """Refuse to overwrite a finished model or silently restart an interrupted one; change nothing when refusing."""
    out = Path(run_args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file. Give a directory path.")
    where = _nearest_existing(out)
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(
            f"--output_dir {out} is not writable: {where} is read-only for this user. Choose a writable --output_dir."
        )
    if not out.is_dir():
        return
    if resume is None and not run_args.overwrite_output_dir:
        if (out / RECORD_FILE).exists():
            raise ValueError(
                f"--output_dir {out} already holds a model. Choose another --output_dir, "
                "or pass --overwrite_output_dir true to replace it."
            )
        if any(_checkpoints(out)):
            raise ValueError(
                f"--output_dir {out} holds an unfinished run (checkpoints but no {RECORD_FILE}). "
                "Pass --resume_from_checkpoint true to continue it, or --overwrite_output_dir true to start over."
            )
        weights = [f for f in _MODEL_FILES if (out / f).exists()]
        if weights:
            raise ValueError(
                f"--output_dir {out} already holds model files ({', '.join(weights)}) but no {RECORD_FILE}: another "
                "model, or an hfssl run stopped while saving. Choose another --output_dir, or pass --overwrite_output_dir "
                "true to replace it."
            )
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)  # left by a run that died while saving


def publish_staging(staging: Path, output_dir: Path) -> None:
    """Move the finished files from `staging` into `output_dir`, hfssl.json last, and drop `staging`.

    An earlier hfssl.json goes first, so a crash half-way never leaves new weights beside an old record.
    """
    (output_dir / RECORD_FILE).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == RECORD_FILE):
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def plot_loss_curve(
    log_history: list[dict[str, Any]], path: Path, eval_key: str = "eval_loss", title: str = "Training loss"
) -> None:
    """Write a PNG of the training loss (and eval loss where logged) against steps, from the Trainer's log history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    if train:
        ax.plot(*zip(*train), label="train loss")
    evals = [(e["step"], e[eval_key]) for e in log_history if eval_key in e]
    if evals:
        ax.plot(*zip(*evals), "o-", label=eval_key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run too short to log has no curve to label
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_output(
    trainer: Any,
    record: dict[str, Any],
    card: Callable[[Path], Any] | None = None,
    extra: Callable[[Path], None] | None = None,
    log_history: list[dict[str, Any]] | None = None,
) -> None:
    """Write weights (safetensors), tokenizer/processor, metrics, trainer_state.json, loss plot, card and hfssl.json
    atomically.

    `trainer.save_model` gathers weights under DDP/FSDP/DeepSpeed; only the main process writes the rest.
    `log_history` replaces the trainer's own where a run had several trainers (lp_ft's two stages).
    """
    out = Path(trainer.args.output_dir)
    staging = out / STAGING_DIR
    trainer.save_model(str(staging))  # every process takes part (sharded state dicts)
    # No process may still be writing into the staging folder when the main one moves it into place.
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the options live in hfssl.json
    write_json(staging / "all_results.json", record.get("metrics", {}))
    state = copy.copy(trainer.state)  # the Trainer's log history, as its checkpoints keep it (tools read this file)
    if log_history is not None:
        state.log_history = log_history
    state.save_to_json(str(staging / TRAINER_STATE_FILE))
    plot_loss_curve(state.log_history, staging / "loss_curve.png")
    if extra is not None:
        extra(staging)
    if card is not None:
        card(staging).save(staging / "README.md")
    write_json(staging / RECORD_FILE, record)
    publish_staging(staging, out)


def read_record(model_name_or_path: str | None) -> dict[str, Any] | None:
    """The hfssl.json of a local hfssl output, or None when the path is not one (a Hub id, another model)."""
    if model_name_or_path and os.path.isfile(os.path.join(model_name_or_path, RECORD_FILE)):
        with open(os.path.join(model_name_or_path, RECORD_FILE), encoding="utf-8") as f:
            return json.load(f)
    return None


def parent_lineage(model_name_or_path: str | None) -> dict[str, Any] | None:
    """The lineage recorded by an earlier hfssl run, when the starting model is one; with `repo_id` when it was pushed."""
    record = read_record(model_name_or_path)
    if record is None:
        return None
    pushed = (record.get("pushed_to") or {}).get("repo_id")
    return {**record.get("lineage", {}), **({"repo_id": pushed} if pushed else {})}
