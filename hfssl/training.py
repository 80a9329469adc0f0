"""What every recipe shares around the Trainer: precision defaults, output-dir safety, logs, plots.

Output directories are finished atomically: the final artifacts are written to a hidden
staging folder inside `output_dir` and moved into place, `hfssl.json` last. A directory
without `hfssl.json` is therefore never mistaken for a finished model.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

__all__ = [
    "write_json",
    "parent_lineage",
    "save_output",
    "start_run",
    "RECORD_FILE",
    "bf16_supported",
    "chosen_precision",
    "precision_defaults",
    "publish_staging",
    "hardware_name",
    "keep_freed_memory",
    "plot_loss_curve",
    "prepare_output_dir",
    "resolve_resume",
    "setup_logging",
]

logger = logging.getLogger(__name__)

RECORD_FILE = "hfssl.json"
STAGING_DIR = ".hfssl-staging"  # final files are assembled here, then moved into place
_MODEL_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def setup_logging(run_args: TrainingArguments) -> None:
    """hfssl's loggers follow --log_level (main process) and --log_level_replica (the others), as transformers' do.

    The default, "passive", means INFO from hfssl on the main process (transformers stays at its warning level).
    """
    from transformers.utils.logging import get_log_levels_dict

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    main = run_args.process_index == 0
    name = run_args.log_level if main else run_args.log_level_replica
    level = get_log_levels_dict()[name] if name != "passive" else (logging.INFO if main else logging.WARNING)
    logging.getLogger("hfssl").setLevel(level)


def bf16_supported() -> bool:
    """bf16 autocast pays off: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 / AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def chosen_precision() -> str | None:
    """The mixed precision the user chose outside hfssl ("no", "bf16", "fp16", "fp8"), or None when nothing was.

    Read from `accelerate launch --mixed_precision`, the accelerate config file it used, or an
    ACCELERATE_MIXED_PRECISION set without a launcher. `accelerate launch` exports "no" when nothing was
    chosen, so under a launcher the variable alone is not a choice: its command line and config are read
    (Linux: /proc; elsewhere the variable counts as chosen).
    """
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    launcher = _launcher_argv()
    if launcher is None:
        return env.lower() if env else None
    for i, token in enumerate(launcher):
        if token == "--mixed_precision" and i + 1 < len(launcher):
            return launcher[i + 1].lower()
        if token.startswith("--mixed_precision="):
            return token.split("=", 1)[1].lower()
    config = next((launcher[i + 1] for i, t in enumerate(launcher[:-1]) if t == "--config_file"), None)
    if config is None:
        from accelerate.commands.config import default_config_file

        config = default_config_file
    try:
        import yaml

        with open(config, encoding="utf-8") as f:
            value = (yaml.safe_load(f) or {}).get("mixed_precision")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value).lower() if value else None


def _launcher_argv() -> list[str] | None:
    """The command line of the `accelerate launch` above this process (its parent, or torchrun's), else None."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return None
    pid = os.getppid()
    for _ in range(3):  # accelerate launch -> (torchrun agent, same process) -> this worker
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if "launch" in argv and any(Path(a).name.startswith("accelerate") or a.startswith("accelerate.") for a in argv):
            return argv
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's parent
        if pid <= 1:
            return None
    return None


def precision_defaults(hfssl_bf16: bool) -> dict[str, bool]:
    """The recipe defaults for --bf16 / --fp16: the user's choice in accelerate when there is one, else hfssl's.

    hfssl's own default is bf16 autocast where the hardware has bf16 units (`hfssl_bf16`); a `--bf16` or
    `--fp16` typed to the recipe overrides both.
    """
    choice = chosen_precision()
    if choice in ("bf16", "fp16"):
        return {"bf16": choice == "bf16", "fp16": choice == "fp16"}
    if choice is not None:  # "no" (fp32), or fp8 which accelerate applies itself
        return {"bf16": False, "fp16": False}
    return {"bf16": hfssl_bf16}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS. True when applied.

    By default glibc serves every allocation above 32 MB (and, until its threshold adapts, above
    128 kB) with a fresh mmap and unmaps it on free, so a training step that allocates the same large
    tensors every time (vocab-sized logits and embedding gradients, activations) page-faults all of
    them back in, zero-filled, on every step: 147k faults per step for a 4-layer BERT at hidden 512,
    batch 32 x 128, which took 30% of the step on a 2-core Xeon. This does what `MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=...` (or LD_PRELOAD of jemalloc/tcmalloc, as Intel's PyTorch CPU guides
    suggest) would, from inside the process: large blocks come from the heap and stay there. The
    process keeps up to 2 GiB of freed memory for reuse. Affects this whole process; no-op where
    the C library is not glibc. Hand-written: no library exposes malloc tuning.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def hardware_name() -> str:
    """A short description of the machine, for summaries and model cards."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    cpu = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: without it, the run died while saving this checkpoint."""
    return (checkpoint / TRAINER_STATE_NAME).is_file()


def resolve_resume(run_args: TrainingArguments) -> str | None:
    """Turn --resume_from_checkpoint true|PATH into a complete checkpoint's path, or fail clearly."""
    value = run_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "no", "0"):
        return None
    if str(value).lower() in ("true", "yes", "1"):
        out = Path(run_args.output_dir)
        checkpoints = sorted((int(m.group(1)), p) for p in (out.iterdir() if out.is_dir() else ())
                             if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", p.name)) and p.is_dir())
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
            f"--resume_from_checkpoint {value} is not a complete checkpoint (no {TRAINER_STATE_NAME}; a run stopped "
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
        raise ValueError(f"--output_dir {out} is not writable: {where} is read-only for this user. Choose a writable --output_dir.")
    if not out.is_dir():
        return
    if resume is None and not run_args.overwrite_output_dir:
        if (out / RECORD_FILE).exists():
            raise ValueError(
                f"--output_dir {out} already holds a model. Choose another --output_dir, "
                "or pass --overwrite_output_dir true to replace it."
            )
        if get_last_checkpoint(str(out)) is not None:
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


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path, eval_key: str = "eval_loss", title: str = "Training loss") -> None:
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


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")



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
    state.save_to_json(str(staging / TRAINER_STATE_NAME))
    plot_loss_curve(state.log_history, staging / "loss_curve.png")
    if extra is not None:
        extra(staging)
    if card is not None:
        card(staging).save(staging / "README.md")
    write_json(staging / RECORD_FILE, record)
    publish_staging(staging, out)


def parent_lineage(model_name_or_path: str | None) -> dict[str, Any] | None:
    """The lineage recorded by an earlier hfssl run, when the starting model is one; with `repo_id` when it was pushed."""
    if model_name_or_path and os.path.isfile(os.path.join(model_name_or_path, RECORD_FILE)):
        with open(os.path.join(model_name_or_path, RECORD_FILE), encoding="utf-8") as f:
            record = json.load(f)
        pushed = (record.get("pushed_to") or {}).get("repo_id")
        return {**record.get("lineage", {}), **({"repo_id": pushed} if pushed else {})}
    return None


def _log_precision(run_args: Any) -> None:
    """Say which precision runs and who chose it (accelerate launch also prints its own default of "no")."""
    ran = "bf16 autocast" if run_args.bf16 else "fp16 autocast" if run_args.fp16 else "fp32"
    chosen = chosen_precision()
    if chosen is not None:
        logger.info("Precision: %s (mixed precision %r chosen in accelerate launch / accelerate config)", ran, chosen)
    elif run_args.bf16 and bf16_supported():
        logger.info("Precision: %s, hfssl's default on this hardware (accelerate launch --mixed_precision no or --bf16 false "
                    "turns it off)", ran)


def start_run(run_args: Any) -> tuple[str | None, Any]:
    """What every recipe does first: logging, the checkpoint to resume, output-dir checks, the push request."""
    from hfssl.hub import take_push_request  # hub imports this module

    setup_logging(run_args)
    _log_precision(run_args)
    if getattr(run_args, "keep_freed_memory", False) and keep_freed_memory():
        logger.info("malloc keeps freed memory for reuse (--keep_freed_memory true)")
    resume = resolve_resume(run_args)
    prepare_output_dir(run_args, resume)
    if resume is not None:
        logger.info("Resuming from %s", resume)
    push = take_push_request(run_args)
    run_args.hub_token = None  # only a push uses it; the Trainer pickles its arguments into every checkpoint
    return resume, push
