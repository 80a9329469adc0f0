"""Secrets and untrusted files: a sentinel Hub token never leaks; weights are safetensors; loading never unpickles code.

Every recipe runs once with HF_TOKEN set to a sentinel and `--hub_token` given the same value (mlm.py also
pushes to a loopback Hub with it). Then no log line, printed text, exception message, output file or
checkpoint file (zip members of torch's files included) may hold the sentinel.

Torch pickle files that remain, all in checkpoint-* folders and all written by the Trainer (or hfssl's masking RNG):
optimizer.pt, scheduler.pt, rng_state.pth, masking_rng_*.pt, and training_args.bin. transformers' Trainer
reads the first three with `torch.load(..., weights_only=True)` (transformers 5 checks that torch >= 2.6),
hfssl reads masking_rng_*.pt the same way, and nothing reads training_args.bin (hfssl drops it from the
final output). The last test below resumes from checkpoints whose pickles would run code: refused.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch

from conftest import ROOT, TINY_MLM, load_recipe
from hub_server import LoopbackHub

SENTINEL = "hf_SENTINELsecurityCheck0123456789abcdef"
TINY_VIT = [
    "--config_overrides",
    "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64,"
    "decoder_num_hidden_layers=1,decoder_hidden_size=32,decoder_num_attention_heads=2,decoder_intermediate_size=64",
]
QUIET = ["--disable_tqdm", "true", "--hub_token", SENTINEL]
MLM_ARGS = TINY_MLM + QUIET + ["--max_steps", "4", "--eval_steps", "4", "--save_steps", "2", "--max_corpus_documents", "300"]
PICKLES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "masking_rng_0.pt"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """All four recipes with the sentinel token, one of them pushing: output dirs and everything they printed or logged."""
    root = tmp_path_factory.mktemp("secure")
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_TOKEN", SENTINEL)
    patch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # the loopback Hub only; nothing else is reachable
    patch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    handler = logging.StreamHandler(logs := io.StringIO())
    handler.setLevel(logging.DEBUG)
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in ("", "hfssl", "huggingface_hub", "transformers")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    outs = {name: root / name for name in ("mlm", "mim", "finetune_text", "finetune_image")}
    errors = []
    printed_out, printed_err = io.StringIO(), io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(printed_out),
            contextlib.redirect_stderr(printed_err),
            LoopbackHub(root / "hub", token=SENTINEL) as hub,
        ):
            patch.setenv("HF_ENDPOINT", hub.endpoint)
            load_recipe("mlm").main(
                MLM_ARGS + ["--output_dir", str(outs["mlm"]), "--push_to_hub", "true", "--hub_model_id", "me/secure"]
            )
            pushed = hub.files("me/secure")
            load_recipe("mim").main(
                TINY_VIT
                + QUIET
                + [
                    "--output_dir",
                    str(outs["mim"]),
                    "--max_steps",
                    "2",
                    "--max_train_samples",
                    "96",
                    "--per_device_train_batch_size",
                    "16",
                    "--save_steps",
                    "2",
                    "--probe_samples",
                    "64",
                    "--bf16",
                    "false",
                ]
            )
            load_recipe("finetune_text").main(
                QUIET
                + [
                    "--model_name_or_path",
                    str(outs["mlm"]),
                    "--output_dir",
                    str(outs["finetune_text"]),
                    "--trust_remote_code",
                    "true",
                    "--train_samples_per_class",
                    "4",
                    "--max_eval_samples",
                    "16",
                    "--max_seq_length",
                    "32",
                    "--max_steps",
                    "2",
                    "--save_strategy",
                    "steps",
                    "--save_steps",
                    "2",
                    "--eval_strategy",
                    "no",
                ]
            )
            load_recipe("finetune_image").main(
                QUIET
                + [
                    "--model_name_or_path",
                    str(outs["mim"]),
                    "--output_dir",
                    str(outs["finetune_image"]),
                    "--strategy",
                    "lora",
                    "--train_samples_per_class",
                    "4",
                    "--max_eval_samples",
                    "20",
                    "--max_steps",
                    "2",
                    "--save_strategy",
                    "steps",
                    "--save_steps",
                    "2",
                    "--eval_strategy",
                    "no",
                ]
            )
            for bad in (
                ["--hub_tokn", SENTINEL],
                ["--max_steps", SENTINEL],
            ):  # a misspelt flag; the token as another option's value
                try:
                    load_recipe("mlm").main(MLM_ARGS + bad + ["--output_dir", str(root / "refused")])
                except ValueError as err:
                    errors.append(err)
    finally:
        root_logger.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        patch.undo()
    return dict(
        outs=outs,
        logs=logs.getvalue(),
        out=printed_out.getvalue(),
        err=printed_err.getvalue(),
        errors=errors,
        pushed=pushed,
        authorizations=hub.authorizations,
    )


def _readable(path: Path) -> list[bytes]:
    """A file's bytes, and the uncompressed members of a zip (torch's .pt/.pth/.bin files are zips)."""
    data = [path.read_bytes()]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            data += [z.read(name) for name in z.namelist()]
    return data


@pytest.mark.slow
def test_the_sentinel_token_never_leaks(runs):
    assert any(SENTINEL in a for a in runs["authorizations"]), "the push did not use the token, so this test proves nothing"
    assert runs["pushed"]  # mlm.py pushed its finished output with it
    assert len(runs["errors"]) == 2  # the bad invocations were refused...
    for err in runs["errors"]:  # ...without quoting the token
        assert SENTINEL not in str(err) and SENTINEL not in repr(err.args), err
    assert "hfssl mlm:" in runs["out"] and "Saved to" in runs["out"]  # the summaries were captured
    for text in (runs["out"], runs["err"], runs["logs"]):
        assert text and SENTINEL not in text
    files = [p for out in runs["outs"].values() for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "trainer_state.json" for p in files)
    for path in files:
        for data in _readable(path):
            assert SENTINEL.encode() not in data, f"the token is in {path}"
    for name, content in runs["pushed"].items():
        assert SENTINEL.encode() not in content, name


@pytest.mark.slow
def test_weights_are_safetensors_and_the_only_pickles_are_trainer_state(runs):
    for recipe, out in runs["outs"].items():
        final = [
            p
            for p in out.rglob("*")
            if p.is_file() and not any(part.startswith("checkpoint-") for part in p.relative_to(out).parts)
        ]
        assert not [p for p in final if p.suffix in PICKLES], recipe  # no pickle at all in what from_pretrained and a push read
        assert [p for p in final if p.suffix == ".safetensors"], recipe
        checkpoints = sorted(out.glob("checkpoint-*"))
        assert checkpoints, recipe
        for checkpoint in checkpoints:
            names = {p.name for p in checkpoint.iterdir()}
            assert {"model.safetensors", "adapter_model.safetensors"} & names, (recipe, names)
            assert {n for n in names if Path(n).suffix in PICKLES} <= TRAINER_STATE, (recipe, names)


def test_trust_remote_code_is_off_unless_asked_and_recorded(runs):
    options = {recipe: json.loads((out / "hfssl.json").read_text())["options"]["model"] for recipe, out in runs["outs"].items()}
    assert options["finetune_text"]["trust_remote_code"] is True  # asked for: recorded
    assert all(options[r]["trust_remote_code"] is False for r in ("mlm", "mim", "finetune_image"))


def test_hfssl_loads_torch_files_only_with_weights_only():
    calls = []
    for path in (ROOT / "hfssl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) in ("torch.load", "load")
                and "torch" in ast.unparse(node.func)
            ):
                calls.append((path.name, {k.arg: ast.unparse(k.value) for k in node.keywords}))
    assert calls  # hfssl does load one kind of torch file: the masking RNG state of a checkpoint
    assert all(kw.get("weights_only") == "True" for _, kw in calls), calls
    imported = {
        alias.name
        for path in (ROOT / "hfssl").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}, imported


class _RunsCode:
    """Unpickling this runs `touch <marker>`: what a booby-trapped checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "trap, reader", [("masking_rng_0.pt", "train"), ("rng_state.pth", "_load_rng_state")]
)  # hfssl's, the Trainer's
def test_resuming_never_unpickles_code(runs, tmp_path, trap, reader):
    out = tmp_path / "out"
    shutil.copytree(runs["outs"]["mlm"] / "checkpoint-2", out / "checkpoint-2")
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(marker), out / "checkpoint-2" / trap)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as info:
        load_recipe("mlm").main(MLM_ARGS + ["--output_dir", str(out), "--resume_from_checkpoint", "true"])
    called = [entry.name for entry in info.traceback]
    assert reader in called and (reader != "train" or "_inner_training_loop" not in called), (
        called
    )  # refused by the intended reader
    assert not marker.exists()
    assert not (out / "hfssl.json").exists()
