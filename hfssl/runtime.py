"""The process a recipe runs in: logging, mixed precision chosen by the user or by hfssl, malloc, hardware."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "accelerator_available",
    "bf16_supported",
    "chosen_precision",
    "hardware_name",
    "keep_freed_memory",
    "log_precision",
    "precision_defaults",
    "setup_logging",
    "use_all_cores",
]

logger = logging.getLogger(__name__)


def setup_logging(run_args: Any) -> None:
    """hfssl's loggers follow --log_level (main process) and --log_level_replica (the others), as transformers' do.

    The default, "passive", means INFO from hfssl on the main process (transformers stays at its warning level).
    """
    from transformers.utils.logging import get_log_levels_dict

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    main = run_args.process_index == 0
    name = run_args.log_level if main else run_args.log_level_replica
    level = get_log_levels_dict()[name] if name != "passive" else (logging.INFO if main else logging.WARNING)
    logging.getLogger("hfssl").setLevel(level)


def accelerator_available() -> bool:
    """A device other than the CPU that torch can train on (CUDA, XPU, MPS, NPU, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator and accelerator.is_available()) or torch.cuda.is_available()


def bf16_supported() -> bool:
    """bf16 autocast pays off: an accelerator with bf16 (CUDA, XPU, MPS, ...), or a CPU with AVX-512 BF16 / AMX."""
    if accelerator_available():
        from transformers.utils import is_torch_bf16_gpu_available

        return is_torch_bf16_gpu_available()
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
    found = _launcher()
    return found[1] if found else None


def _launcher() -> tuple[int, list[str]] | None:
    """(pid, command line) of the `accelerate launch` above this process, else None (Linux: read from /proc)."""
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
            return pid, argv
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's parent
        if pid <= 1:
            return None
    return None


def _launcher_sets_threads(pid: int) -> bool:
    """OMP_NUM_THREADS is in the environment the launcher started with (unreadable: assume the user set it)."""
    try:
        return any(e.startswith(b"OMP_NUM_THREADS=") for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return True


def use_all_cores() -> int | None:
    """Give each process its share of the CPU cores when `accelerate launch` left it one thread; return the count set.

    Without `--cpu`, `accelerate launch` sets OMP_NUM_THREADS=1 for every process on a machine without a GPU, which
    halves training speed on 2 cores (a tiny ModernBERT step: 0.21 -> 0.40 s) and costs more on bigger CPUs. When the
    user chose no thread count (no --num_cpu_threads_per_process, no OMP_NUM_THREADS in the launcher's environment),
    each process gets physical cores / processes on this machine, as `accelerate launch --cpu` would give.
    """
    if accelerator_available():
        return None
    found = _launcher()
    if found is None or any(a.startswith("--num_cpu_threads_per_process") for a in found[1]):
        return None
    if _launcher_sets_threads(found[0]):
        return None  # the user's own setting
    import psutil
    import torch

    cores = min(psutil.cpu_count(logical=False) or 1, len(os.sched_getaffinity(0)))
    threads = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if threads <= torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for processes this one starts (data-loader workers keep their own)
    return threads


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
    import torch

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


def log_precision(run_args: Any) -> None:
    """Say which precision runs and who chose it (accelerate launch also prints its own default of "no")."""
    ran = "bf16 autocast" if run_args.bf16 else "fp16 autocast" if run_args.fp16 else "fp32"
    chosen = chosen_precision()
    if chosen is not None:
        logger.info("Precision: %s (mixed precision %r chosen in accelerate launch / accelerate config)", ran, chosen)
    elif run_args.bf16 and bf16_supported():
        logger.info(
            "Precision: %s, hfssl's default on this hardware (accelerate launch --mixed_precision no or --bf16 false "
            "turns it off)",
            ran,
        )
