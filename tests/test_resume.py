"""Killing a real run with SIGKILL after a checkpoint, then resuming it, reaches the weights of an uninterrupted run.

Tolerance: bit-identical (atol=0, rtol=0) on CPU, also with bf16 autocast: masks are drawn at step
time from a generator saved in each checkpoint, the model initialisation is seeded, and the
Trainer restores the data order, optimizer, scheduler and RNG states.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_MLM, load_recipe

STEPS, EVERY = 30, 5


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    """recipes/mlm.py in a fresh interpreter, as a user starts it; stdout and stderr go to `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "recipes" / "mlm.py"), *args], stdout=f, stderr=subprocess.STDOUT, env=env
        )


def _finish(proc: subprocess.Popen, log: Path) -> str:
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return log.read_text()


def _complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, wordpiece):
    wordpiece.save_pretrained(tmp_path / "tok")  # trained tokenizers differ run to run; fix one for every run
    args = TINY_MLM + [
        "--max_steps",
        str(STEPS),
        "--save_steps",
        str(EVERY),
        "--eval_steps",
        str(STEPS),
        "--seed",
        "3",
        "--tokenizer_name",
        str(tmp_path / "tok"),
        "--disable_tqdm",
        "true",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    uninterrupted = _launch(args + ["--output_dir", str(full)], tmp_path / "full.log")

    # Start the run, wait for its second complete checkpoint, and kill it without warning.
    killed = _launch(args + ["--output_dir", str(part)], tmp_path / "killed.log")
    deadline = time.monotonic() + 600
    while killed.poll() is None and not [s for s in _complete_checkpoints(part) if s >= 2 * EVERY]:
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    done = _complete_checkpoints(part)
    assert done and max(done) < STEPS, done
    assert not (part / "hfssl.json").exists() and not (part / "model.safetensors").exists()

    # Rerun without --resume_from_checkpoint: refused with a clear message, and nothing is touched.
    before = _snapshot(part)
    with pytest.raises(
        ValueError,
        match=rf"--output_dir {part} holds an unfinished run \(checkpoints but no hfssl\.json\)\. "
        r"Pass --resume_from_checkpoint true to continue it",
    ):
        load_recipe("mlm").main(args + ["--output_dir", str(part)])
    assert _snapshot(part) == before

    # Resume: it continues from the last complete checkpoint, and runs only the remaining steps.
    resumed = _finish(
        _launch(args + ["--output_dir", str(part), "--resume_from_checkpoint", "true"], tmp_path / "resumed.log"),
        tmp_path / "resumed.log",
    )
    last = max(done)
    assert f"Resuming from {part / f'checkpoint-{last}'}" in resumed
    assert resumed.count("{'loss'") == (STEPS - last) // EVERY  # one log line per 5 steps: only the remaining steps ran
    _finish(uninterrupted, tmp_path / "full.log")

    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)  # bit-identical
    metrics = [json.loads((d / "hfssl.json").read_text())["metrics"] for d in (full, part)]
    assert metrics[0]["eval_mlm_loss"] == metrics[1]["eval_mlm_loss"]
