"""The Python API and the habits of transformers' example scripts: in-memory datasets, exit codes, the
user's precision, --log_level, bare boolean flags, --report_to checks, trainer_state.json, failed pushes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict
from PIL import Image

import hfssl
import hfssl.runtime
from conftest import SENTINEL, TINY_MLM, load_recipe
from hfssl.api import script
from hfssl.args import OptionError, RunArguments, TextDataArguments, TextModelArguments, parse_args
from hfssl.data.samples import python_docs_corpus, python_docs_labeled

TEXT = dict(
    train_samples_per_class=8,
    max_eval_samples=40,
    max_seq_length=32,
    max_steps=4,
    per_device_train_batch_size=16,
    eval_strategy="no",
    learning_rate=5e-3,
    disable_tqdm=True,
)


def _labeled_texts() -> DatasetDict:
    texts, labels, names = python_docs_labeled()
    rows = Dataset.from_dict({"sentence": texts[:600], "topic": [names[i] for i in labels[:600]]})
    split = rows.train_test_split(test_size=0.2, seed=0)
    return DatasetDict(train=split["train"], validation=split["test"])


@pytest.mark.slow
def test_run_finetune_text_on_an_in_memory_dataset_dict(tmp_path, minilm_path):
    data = _labeled_texts()
    result = hfssl.run(
        "finetune_text",
        dataset=data,
        model_name_or_path=minilm_path,
        text_column="sentence",
        label_column="topic",
        output_dir=str(tmp_path / "out"),
        **TEXT,
    )
    assert isinstance(result, hfssl.Result) and result.output_dir == tmp_path / "out" and result.recipe == "finetune_text"
    record = json.loads((result.output_dir / "hfssl.json").read_text())
    assert result.metrics["eval_accuracy"] == record["metrics"]["eval_accuracy"] > 0
    assert record["metrics"]["eval_samples"] == 40 <= len(data["validation"])  # the given validation split, not a cut of train
    assert sorted(record["labels"]) == sorted(set(data["train"]["topic"]))
    assert record["lineage"]["data"] == "in-memory dataset" and "dataset" not in record["options"]["data"]
    assert result.fit.model.config.id2label == {i: name for i, name in enumerate(record["labels"])}


def test_run_mlm_on_an_in_memory_dataset_and_a_packaged_preset(tmp_path):
    docs = Dataset.from_dict({"body": python_docs_corpus(400)})
    result = hfssl.run(
        "mlm",
        dataset=docs,
        config="mlm_from_scratch.yaml",
        output_dir=str(tmp_path / "mlm"),
        text_column="body",
        vocab_size=1500,
        max_seq_length=64,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        config_overrides="num_hidden_layers=1,hidden_size=64,num_attention_heads=2,intermediate_size=128",
        max_steps=3,
        eval_steps=3,
        save_steps=3,
        disable_tqdm=True,
        bf16=False,
    )
    record = json.loads((tmp_path / "mlm" / "hfssl.json").read_text())
    assert result.metrics["eval_mlm_loss"] == record["metrics"]["eval_mlm_loss"] and result.metrics["train_steps"] == 3
    assert record["options"]["data"]["text_column"] == "body" and record["lineage"]["data"] == "in-memory dataset"


def test_run_finetune_image_on_in_memory_pil_images(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((x * 16).clip(0, 255).astype(np.uint8)) for x in digits.images[:300]]
    data = Dataset.from_dict({"img": images, "digit": digits.target[:300].tolist()})
    data = data.cast_column("digit", ClassLabel(names=[str(d) for d in range(10)]))
    result = hfssl.run(
        "finetune_image",
        dataset=data,
        output_dir=str(tmp_path / "img"),
        train_samples_per_class=6,
        max_eval_samples=40,
        max_steps=3,
        per_device_train_batch_size=20,
        eval_strategy="no",
        disable_tqdm=True,
    )
    assert result.metrics["eval_samples"] == 30  # 10% of 300 held out, as for a single-split Hub dataset
    assert json.loads((tmp_path / "img" / "config.json").read_text())["id2label"]["3"] == "3"


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(max_stpes=3), r"Unknown option\(s\): max_stpes\. Did you mean --max_steps\?"),
        (dict(dataset=[{"text": "a"}]), r"dataset= must be a datasets.Dataset or DatasetDict, got list"),
        (
            dict(dataset=Dataset.from_dict({"text": ["a", "b"]}), train_file="x.txt"),
            r"dataset= and --train_file both name the data",
        ),
        (dict(learning_rate=-1.0), r"learning_rate"),
    ],
)
def test_api_option_errors_come_before_any_work(tmp_path, call, message):
    with pytest.raises(OptionError, match=message):
        hfssl.run("mlm", output_dir=str(tmp_path / "o"), **call)
    assert not (tmp_path / "o").exists()


def test_option_errors_print_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        script(load_recipe("mlm").main, ["--max_stesp", "3", "--output_dir", str(tmp_path)], prog="hfssl mlm")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.splitlines() == [
        "hfssl mlm: error: Could not parse options: unrecognized arguments: --max_stesp 3. Did you mean --max_steps? "
        "See `--help` for the options and their types."
    ]
    with pytest.raises(OptionError):  # --log_level debug: the full traceback instead
        script(load_recipe("mlm").main, ["--max_stesp", "3", "--log_level", "debug"], prog="hfssl mlm")


def test_a_failed_run_exits_1_with_its_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        script(load_recipe("mlm").main, ["--train_file", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and "missing.txt does not exist" in err and "Traceback" not in err


def test_optional_booleans_take_the_bare_flag(tmp_path):
    _, model, run = parse_args(
        (TextDataArguments, TextModelArguments, RunArguments),
        ["--train_tokenizer", "--sparse_head", "false", "--output_dir", str(tmp_path)],
    )
    assert model.train_tokenizer is True and model.sparse_head is False


def test_report_to_a_missing_integration_fails_at_parsing_naming_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    with pytest.raises(
        OptionError,
        match=r"--report_to tensorboard: the tensorboard package is not installed\. "
        r"Install it with pip install 'hfssl\[tensorboard\]'",
    ):
        parse_args((RunArguments,), ["--report_to", "tensorboard", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    "launcher, env, config, expected",
    [
        (None, None, None, None),  # nothing chosen: hfssl's default
        (None, "no", None, "no"),  # ACCELERATE_MIXED_PRECISION set by the user, no launcher
        (["accelerate", "launch", "--mixed_precision", "no", "x.py"], "no", None, "no"),
        (["accelerate", "launch", "--mixed_precision=fp16", "x.py"], "fp16", None, "fp16"),
        (["accelerate", "launch", "x.py"], "no", None, None),  # the launcher's own "no" when nothing was chosen
        (["accelerate", "launch", "x.py"], "no", "mixed_precision: bf16\n", "bf16"),  # from `accelerate config`
        (["accelerate", "launch", "--config_file", "{dir}/c.yaml", "x.py"], "no", "mixed_precision: 'no'\n", "no"),
    ],
)
def test_precision_chosen_in_accelerate_wins_over_hfssl_default(tmp_path, monkeypatch, launcher, env, config, expected):
    import accelerate.commands.config

    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    launcher = [a.replace("{dir}", str(tmp_path)) for a in launcher] if launcher else None
    monkeypatch.setattr(hfssl.runtime, "_launcher_argv", lambda: launcher)
    default_config = tmp_path / ("c.yaml" if launcher and "--config_file" in launcher else "default_config.yaml")
    if config:
        default_config.write_text(config)
    monkeypatch.setattr(accelerate.commands.config, "default_config_file", str(tmp_path / "default_config.yaml"))
    assert hfssl.runtime.chosen_precision() == expected
    defaults = hfssl.runtime.precision_defaults(True)
    assert defaults["bf16"] == (expected in (None, "bf16")) and defaults.get("fp16", False) == (expected == "fp16")


def test_log_level_governs_hfssl_logs(tmp_path, caplog):
    for level, shown in (("error", False), ("passive", True)):
        run = RunArguments(output_dir=str(tmp_path), log_level=level)
        hfssl.runtime.setup_logging(run)
        assert logging.getLogger("hfssl").isEnabledFor(logging.INFO) is shown


@pytest.mark.slow
def test_outputs_keep_the_trainer_state_and_plot_from_it(tmp_path):
    out = tmp_path / "mlm"
    load_recipe("mlm").main(
        TINY_MLM
        + [
            "--output_dir",
            str(out),
            "--max_steps",
            "6",
            "--logging_steps",
            "2",
            "--eval_steps",
            "3",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ]
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == [2, 4, 6]
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [3, 6, 6]  # two in training, the final one
    assert (out / "loss_curve.png").stat().st_size > 5000


@pytest.mark.slow
def test_lp_ft_keeps_both_stages_in_one_log(tmp_path, minilm_path):
    result = hfssl.run(
        "finetune_text",
        model_name_or_path=minilm_path,
        strategy="lp_ft",
        output_dir=str(tmp_path / "o"),
        logging_steps=1,
        **{**TEXT, "max_steps": 6},
    )
    log = json.loads((tmp_path / "o" / "trainer_state.json").read_text())["log_history"]
    losses = [(e["stage"], e["step"]) for e in log if "loss" in e]
    assert losses == [("linear_probe", s) for s in (1, 2)] + [("full", s) for s in (3, 4, 5, 6)], losses
    assert result.fit.log_history == log


@pytest.mark.slow
def test_a_failed_push_exits_1_after_a_complete_output(hub, tmp_path, capsys):
    out = tmp_path / "mlm"
    hub.fail(r"^POST /api/repos/create$", 403, message="forbidden")
    with pytest.raises(SystemExit) as stopped:
        script(
            load_recipe("mlm").main,
            TINY_MLM
            + [
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--save_strategy",
                "no",
                "--disable_tqdm",
                "true",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "me/denied",
                "--hub_endpoint",
                hub.endpoint,
                "--hub_token",
                SENTINEL,
            ],
            prog="hfssl mlm",
        )
    printed, err = capsys.readouterr()
    assert stopped.value.code == 1 and f"Saved to {out}" in printed  # the summary first
    assert f"retry with `hfssl push {out} --repo-id me/denied --endpoint {hub.endpoint}`" in err
    assert (out / "hfssl.json").is_file() and (out / "model.safetensors").is_file() and SENTINEL not in err + printed
