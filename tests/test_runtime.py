"""Run-level helpers (hfssl/runtime.py, hfssl/runs.py): the malloc setting that keeps freed memory."""

import json
import os
import subprocess
import sys

import pytest

import hfssl.runs as runs
from hfssl.args import RunArguments

# Allocates and frees a 64 MB tensor eight times and reports the page faults of the last five.
_FAULTS = """
import json, resource, sys, torch
import hfssl.runs  # as in a recipe: transformers and the rest are loaded before start_run applies the setting
from hfssl.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm-up: the heap reaches its steady layout
    torch.ones(16 * 2**20).sum()
before = faults()
for _ in range(5):
    torch.ones(16 * 2**20).sum()
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_on_reused_tensors():
    default, kept = _faults("default"), _faults("keep")
    # glibc's default unmaps each 64 MB block on free: every reuse faults its 16k pages back in.
    assert default["faults"] > 5 * 10_000, default
    assert kept["applied"] is True
    assert kept["faults"] < 2_000, kept  # none of the 16k pages of a block is faulted in again


@pytest.mark.parametrize("flag", [True, False])
def test_start_run_applies_the_setting_only_when_asked(tmp_path, monkeypatch, flag):
    calls = []
    monkeypatch.setattr(runs, "keep_freed_memory", lambda: calls.append(1) or True)
    run_args = RunArguments(output_dir=str(tmp_path / "out"), keep_freed_memory=flag, report_to="none")
    runs.start_run(run_args)
    assert calls == ([1] if flag else [])


def test_bf16_runs_on_the_cpu_only_when_there_is_no_accelerator(tmp_path, monkeypatch):
    import transformers.training_args

    import hfssl.runtime

    cpu = RunArguments(output_dir=str(tmp_path), bf16=True, report_to="none")
    assert cpu.use_cpu is True  # no accelerator here: bf16 autocast on the CPU
    # An XPU / MPS machine: bf16 must go to that device, not silently to the CPU.
    monkeypatch.setattr(hfssl.runtime, "accelerator_available", lambda: True)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    accelerated = RunArguments(output_dir=str(tmp_path), bf16=True, report_to="none")
    assert accelerated.use_cpu is False


@pytest.mark.parametrize(
    "argv, user_threads, expected",
    [
        (["accelerate", "launch", "recipes/mlm.py"], False, "all"),  # accelerate's 1 thread: every core instead
        (["accelerate", "launch", "--num_cpu_threads_per_process", "1", "recipes/mlm.py"], False, None),  # chosen
        (["accelerate", "launch", "recipes/mlm.py"], True, None),  # OMP_NUM_THREADS set by the user
        (None, False, None),  # not under accelerate launch
    ],
)
def test_accelerate_launch_s_one_thread_becomes_every_core(monkeypatch, argv, user_threads, expected):
    import psutil
    import torch

    import hfssl.runtime

    monkeypatch.setattr(hfssl.runtime, "accelerator_available", lambda: False)
    monkeypatch.setattr(hfssl.runtime, "_launcher", lambda: (12345, argv) if argv else None)
    monkeypatch.setattr(hfssl.runtime, "_launcher_sets_threads", lambda pid: user_threads)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cores = min(psutil.cpu_count(logical=False) or 1, len(os.sched_getaffinity(0)))
        set_to = hfssl.runtime.use_all_cores()
        if expected == "all" and cores > 1:
            assert set_to == cores == torch.get_num_threads() and os.environ["OMP_NUM_THREADS"] == str(cores)
        else:
            assert set_to is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
