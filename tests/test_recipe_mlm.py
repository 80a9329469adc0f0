"""End-to-end runs of recipes/mlm.py on a tiny model and a slice of the embedded corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from conftest import ROOT, TINY_MLM, load_recipe

mlm = load_recipe("mlm")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm") / "out"
    metrics = mlm.main(TINY_MLM + ["--output_dir", str(out), "--max_steps", "100"]).metrics
    return out, metrics


@pytest.mark.slow
def test_loss_falls_on_real_text(trained):
    out, metrics = trained
    record = json.loads((out / "hfssl.json").read_text())
    history = json.loads(sorted(out.glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    assert metrics["eval_mlm_loss"] < 7.0 < torch.log(torch.tensor(1500.0)).item()  # far below uniform guessing
    assert record["metrics"]["eval_perplexity"] == pytest.approx(metrics["eval_perplexity"])


@pytest.mark.slow
def test_output_loads_with_from_pretrained_and_pipeline(trained):
    out, _ = trained
    model = AutoModelForMaskedLM.from_pretrained(out)
    saved = load_file(out / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name])
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 1500
    preds = pipeline("fill-mask", model=str(out))(f"Return the {tok.mask_token} of the list.")
    assert len(preds) == 5 and all("token_str" in p for p in preds)
    for name in ("README.md", "loss_curve.png", "all_results.json", "tokenizer.json", "config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not (out / ".hfssl-staging").exists()
    record = json.loads((out / "hfssl.json").read_text())
    assert record["lineage"] == {"pretext": "masked-lm", "data": "python-stdlib-docstrings", "base_model": None, "parent": None}
    # the defaults for a model from scratch, chosen because no --model_name_or_path was given
    assert record["options"]["masking"]["mlm_probability"] == 0.3 and record["options"]["training"]["learning_rate"] == 2e-3


def test_unigram_plateau_is_measured_and_reported(trained, capsys):
    out, metrics = trained
    # The tiny model's 100 steps: the unigram entropy of the embedded corpus (a few nats with a 1,500 vocabulary)
    assert 4.0 < metrics["unigram_loss"] < 7.3
    assert metrics["left_unigram_plateau"] == (metrics["eval_mlm_loss"] < 0.9 * metrics["unigram_loss"])
    record = json.loads((out / "hfssl.json").read_text())
    assert record["metrics"]["unigram_loss"] == pytest.approx(metrics["unigram_loss"])
    card = (out / "README.md").read_text()
    assert "unigram plateau" in card and ("did not leave" in card) != metrics["left_unigram_plateau"]


def test_unigram_loss_is_the_entropy_of_the_maskable_tokens():
    from datasets import Dataset

    from hfssl.pretext.masked_tokens import plateau_report, unigram_loss

    # tokens 5 and 6 three times each, 7 twice; 0 and 1 are special ([CLS], [SEP]) and never masked
    blocks = Dataset.from_dict({"input_ids": [[0, 5, 6, 7, 1], [0, 5, 6, 5, 6, 7, 1]]})
    p = torch.tensor([3 / 8, 3 / 8, 2 / 8], dtype=torch.float64)
    assert unigram_loss(blocks, 10, [0, 1]) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    assert unigram_loss(blocks.to_iterable_dataset(), 10, [0, 1]) == pytest.approx(unigram_loss(blocks, 10, [0, 1]))
    assert unigram_loss(Dataset.from_dict({"input_ids": [[0, 1]]}), 10, [0, 1]) is None
    assert plateau_report(5.9, 6.1) == {"unigram_loss": 6.1, "left_unigram_plateau": False}
    assert plateau_report(4.2, 6.1)["left_unigram_plateau"] is True


def test_existing_model_is_never_overwritten(trained):
    out, _ = trained
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a model.*--overwrite_output_dir"):
        mlm.main(TINY_MLM + ["--output_dir", str(out), "--max_steps", "2"])
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, wordpiece):
    full, part = tmp_path / "full", tmp_path / "part"
    wordpiece.save_pretrained(tmp_path / "tok")  # trained tokenizers differ run to run; fix one for both runs
    args = TINY_MLM + [
        "--max_steps",
        "20",
        "--save_steps",
        "10",
        "--eval_steps",
        "10",
        "--seed",
        "3",
        "--tokenizer_name",
        str(tmp_path / "tok"),
    ]
    mlm.main(args + ["--output_dir", str(full)])
    # an interrupted run: keep only checkpoint-10 of a second identical run
    mlm.main(args + ["--output_dir", str(part)])
    for entry in part.iterdir():
        if entry.name != "checkpoint-10":
            subprocess.run(["rm", "-rf", str(entry)], check=True)
    with pytest.raises(ValueError, match="unfinished run.*--resume_from_checkpoint true"):
        mlm.main(args + ["--output_dir", str(part)])
    mlm.main(args + ["--output_dir", str(part), "--resume_from_checkpoint", "true"])
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # bit-identical on CPU


@pytest.mark.slow
def test_continued_pretraining_from_packaged_minilm(tmp_path, minilm_path, caplog):
    out = tmp_path / "dapt"
    before = AutoModelForMaskedLM.from_pretrained(minilm_path)
    metrics = mlm.main(
        [
            "--model_name_or_path",
            minilm_path,
            "--max_corpus_documents",
            "400",
            "--max_seq_length",
            "64",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "6",
            "--eval_steps",
            "6",
            "--save_steps",
            "6",
            "--output_dir",
            str(out),
            "--learning_rate",
            "2e-4",
            "--max_eval_samples",
            "40",
            "--logging_steps",
            "1",
        ]
    ).metrics
    assert "no (complete) masked-LM head" in caplog.text
    after = AutoModelForMaskedLM.from_pretrained(out)
    assert after.config.hidden_size == 384 and after.config.num_hidden_layers == 6
    enc_before = before.bert.encoder.layer[0].attention.self.query.weight
    enc_after = after.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(enc_before, enc_after)  # it trained
    assert (enc_before - enc_after).abs().max() < 0.05  # but continued from the pretrained weights
    # the fresh head learns fast on top of the pretrained encoder
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    assert metrics["eval_mlm_loss"] < 8.0
    record = json.loads((out / "hfssl.json").read_text())
    assert record["lineage"]["base_model"] == minilm_path
    # a checkpoint's defaults, where the user set nothing: BERT's 15% masking (the learning rate here was given)
    assert record["options"]["masking"]["mlm_probability"] == 0.15 and record["options"]["training"]["learning_rate"] == 2e-4
    assert "Defaults for continued pretraining of a checkpoint: --mlm_probability 0.15" in caplog.text
    # MiniLM has no MLM head: the fresh one trains at its own rate, the encoder at --learning_rate
    assert record["options"]["model"]["head_learning_rate"] == 1e-3
    assert "The masked-LM head is fresh: --head_learning_rate 0.001" in caplog.text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_file", "{tmp}/missing.txt"], "--train_file .* does not exist"),
        (["--train_file", "{tmp}/empty.txt"], "--train_file: .* empty"),
        (["--train_file", "{tmp}/data.csv", "--text_column", "content"], "--text_column 'content'"),
        (["--mlm_probability", "1.5"], "--mlm_probability must be in"),
        (["--head_learning_rate", "0"], "--head_learning_rate must be positive"),
        (["--max_seq_length", "4096"], "--max_seq_length 4096 is beyond the model's 512 positions"),
        (["--tokenizer_name", "{tmp}/nomask"], "has no mask token"),
        (["--model_name_or_path", "{tmp}/no_such_model"], "does not exist"),
        (["--model_name_or_path", "{tmp}/adapter"], "is a LoRA adapter"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(tmp_path, wordpiece, flags, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "data.csv").write_text("body,label\nsome text here,1\nmore text there,0\n")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=wordpiece.backend_tokenizer, unk_token="[UNK]").save_pretrained(tmp_path / "nomask")
    out = tmp_path / "out"
    flags = [f.format(tmp=tmp_path) for f in flags]
    base = list(TINY_MLM)
    if "--model_name_or_path" in flags:  # a pretrained model takes no from-scratch overrides
        i = base.index("--config_overrides")
        del base[i : i + 2]
    with pytest.raises(ValueError, match=message):
        mlm.main(base + flags + ["--output_dir", str(out), "--max_steps", "2"])
    assert not out.exists()


@pytest.mark.slow
def test_two_process_launch_writes_a_loadable_model(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "recipes" / "mlm.py"),
        *TINY_MLM,
        "--max_steps",
        "10",
        "--output_dir",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "hfssl.json").read_text())["options"]["training"]["max_steps"] == 10
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1
    assert "hfssl mlm:" in proc.stdout and proc.stdout.count("Saved to") == 1  # one summary, from the main process
