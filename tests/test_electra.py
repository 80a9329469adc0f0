"""ELECTRA (`recipes/mlm.py --objective electra`): corruption, tying, the joint model, and end-to-end runs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, EvalPrediction

from conftest import TINY_MLM, load_recipe
from hfssl.models import TEXT_PRESETS, build_electra_models, check_electra_support, modernbert_config
from hfssl.options import OptionError
from hfssl.pretext.masked_tokens import head_parameters
from hfssl.pretext.replaced_tokens import (
    ReplacedTokenDetection,
    replace_tokens,
    replaced_token_loss,
    replaced_token_metrics,
    sample_tokens,
)
from recipe_outputs import python_blocks

mlm = load_recipe("mlm")
ELECTRA = ["--objective", "electra", "--disable_tqdm", "true"]


def test_replaced_token_labels():
    original = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 20, 21, 3, 0, 0]])
    masked = torch.tensor([[0, 1, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    sampled = torch.tensor([99, 12, 20, 7])  # row-major: (0,1) replaced, (0,3) drew the original, (1,1) too, (1,2) replaced
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    corrupted, labels = replace_tokens(original, masked, sampled, attention)
    assert corrupted.tolist() == [[2, 99, 11, 12, 3, 0], [2, 20, 7, 3, 0, 0]]
    assert labels.tolist() == [[0, 1, 0, 0, 0, -100], [0, 0, 1, 0, -100, -100]]  # a sample equal to the original is original
    assert replace_tokens(original, masked, sampled)[1].min() == 0  # no attention mask: no padding to ignore
    logits = torch.tensor([[-9.0, 9.0, -9.0, -9.0, -9.0, 5.0], [-9.0, -9.0, 9.0, -9.0, 7.0, 7.0]])
    assert replaced_token_loss(logits, labels) < 1e-3  # padding positions, whatever their logits, do not count


def test_samples_follow_the_generator_softmax_without_gradient():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, -30.0]], requires_grad=True)
    many = logits.expand(40_000, 5)
    drawn = sample_tokens(many.bfloat16(), torch.Generator().manual_seed(0))
    assert not drawn.requires_grad and drawn.dtype == torch.long
    frequencies = torch.bincount(drawn, minlength=5).double() / len(drawn)
    expected = torch.softmax(logits.detach().double().bfloat16().double(), -1)[0]
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
    again = sample_tokens(many.bfloat16(), torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)  # the generator decides


def test_metrics_count_every_non_padding_token():
    generated = np.array([[[5, 0.1], [6, 2.0], [-100, -100]]], dtype=np.float32)  # (1, N, 2), last row gathering padding
    targets = np.array([[5, 7, -100]])
    rtd_logits = np.array([[3.0, -2.0, 1.0, -1.0, -100.0]])
    rtd_labels = np.array([[1, 0, 0, 1, -100]])
    metrics = replaced_token_metrics(EvalPrediction(predictions=(generated, rtd_logits), label_ids=(targets, rtd_labels)))
    assert metrics["masked_accuracy"] == 0.5 and metrics["mlm_loss"] == pytest.approx(1.05)
    assert metrics["rtd_accuracy"] == 0.5 and metrics["rtd_replaced_recall"] == 0.5 and metrics["replaced_fraction"] == 0.5
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([3.0, -2.0, 1.0, -1.0]), torch.tensor([1.0, 0, 0, 1]))
    assert metrics["rtd_loss"] == pytest.approx(bce.item(), rel=1e-6)


class _Vocabulary:
    """What build_electra_models reads of a tokenizer."""

    pad_token_id, cls_token_id, sep_token_id = 0, 2, 3

    def __len__(self) -> int:
        return 300


@pytest.mark.parametrize("family", ["modernbert", "bert"])
def test_generator_is_a_third_of_the_layers_and_shares_the_embeddings(family):
    size = {**TEXT_PRESETS["tiny"], "num_hidden_layers": 6, "hidden_size": 32, "intermediate_size": 64}
    config = modernbert_config(size) if family == "modernbert" else BertConfig(**size)
    generator, discriminator = build_electra_models(config, _Vocabulary())
    joint = ReplacedTokenDetection(generator, discriminator)
    assert type(discriminator).__name__.endswith("ForTokenClassification") and discriminator.config.num_labels == 1
    assert type(generator).__name__.endswith("ForMaskedLM")
    assert generator.config.num_hidden_layers == 2 and generator.config.hidden_size == discriminator.config.hidden_size
    assert generator.config.num_attention_heads == discriminator.config.num_attention_heads
    shared = discriminator.get_input_embeddings().weight
    assert generator.get_input_embeddings().weight is shared and generator.get_output_embeddings().weight is shared
    assert sum(p is shared for p in joint.parameters()) == 1  # one matrix, optimised once
    # --head_learning_rate: everything but the saved encoder (the shared embeddings are the encoder's)
    encoder = {id(p) for p in discriminator.base_model.parameters()}
    head = {id(p) for p in head_parameters(joint)}
    assert head == {id(p) for p in joint.parameters()} - encoder and id(shared) not in head
    assert {id(p) for p in discriminator.classifier.parameters()} <= head

    # The sparse head (MLM head at the masked positions only) gives the dense head's logits and the same corruption.
    joint.eval()
    ids = torch.randint(5, 300, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[:, 3:6] = ids[:, 3:6]
    ids = ids.masked_fill(labels != -100, 4)
    sparse = joint(ids, labels, sampler=torch.Generator().manual_seed(1), sparse=True)
    dense = joint(ids, labels, sampler=torch.Generator().manual_seed(1), sparse=False)
    torch.testing.assert_close(sparse.mlm_logits, dense.mlm_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(sparse.rtd_labels, dense.rtd_labels) and sparse.rtd_logits.shape == (2, 16)


def test_a_checkpoint_is_the_discriminator_and_the_generator_is_fresh_and_smaller(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    from hfssl.models import load_config

    generator, discriminator = build_electra_models(
        load_config(minilm_path), AutoTokenizer.from_pretrained(minilm_path), minilm_path
    )
    pretrained = AutoModel.from_pretrained(minilm_path).state_dict()
    for name, tensor in discriminator.bert.state_dict().items():
        torch.testing.assert_close(tensor, pretrained[name], rtol=0, atol=0)
    assert generator.config.num_hidden_layers == 2 and generator.config.hidden_size == 384
    ReplacedTokenDetection(generator, discriminator)
    assert generator.get_input_embeddings().weight is discriminator.get_input_embeddings().weight


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--objective", "bogus"], "--objective must be one of mlm, electra, got 'bogus'"),
        (["--objective", "electra", "--model_name_or_path", "{vit}"], "--objective electra: the 'vit' architecture has no"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(tmp_path, flags, message):
    from transformers import ViTConfig

    ViTConfig().save_pretrained(tmp_path / "vit")
    flags = [f.format(vit=tmp_path / "vit") for f in flags]
    base = [] if "--model_name_or_path" in flags else TINY_MLM
    with pytest.raises(ValueError, match=message):
        mlm.main(base + flags + ["--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_objective_is_checked_the_same_way_from_python_and_yaml(tmp_path):
    from transformers import GPT2Config

    with pytest.raises(OptionError, match="--objective must be one of mlm, electra, got 'Electra'"):
        mlm.main([], objective="Electra", output_dir=str(tmp_path / "out"))
    (tmp_path / "run.yaml").write_text("objective: replaced\n")
    with pytest.raises(OptionError, match="--objective must be one of mlm, electra, got 'replaced'"):
        mlm.main([str(tmp_path / "run.yaml"), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="'gpt2' architecture has no masked-LM class \\(the generator\\)"):
        check_electra_support(GPT2Config())  # a token classifier, but no masked LM


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 30-step run whose last step is a checkpoint, so the saved model can be compared with what trained."""
    out = tmp_path_factory.mktemp("electra") / "out"
    caught = io.StringIO()
    handler = logging.StreamHandler(caught)
    logging.getLogger("hfssl").addHandler(handler)
    try:
        metrics = mlm.main(
            TINY_MLM + ELECTRA + ["--output_dir", str(out), "--max_steps", "30", "--eval_steps", "30", "--save_steps", "30"]
        ).metrics
    finally:
        logging.getLogger("hfssl").removeHandler(handler)
    return out, metrics, caught.getvalue()


@pytest.mark.slow
def test_loss_falls_and_metrics_are_reported(trained):
    out, metrics, log = trained
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train = [h for h in history if "loss" in h]
    assert train[-1]["loss"] < train[0]["loss"] - 5, train  # mlm + 50 x rtd
    assert train[-1]["rtd_loss"] < train[0]["rtd_loss"] and train[-1]["mlm_loss"] < train[0]["mlm_loss"], train
    for key in ("eval_mlm_loss", "eval_rtd_loss", "eval_rtd_accuracy", "eval_replaced_fraction", "unigram_loss"):
        assert key in metrics, key
    assert 0.05 < metrics["eval_replaced_fraction"] < 0.15  # 15% masked, a few samples equal to the original
    assert metrics["eval_rtd_accuracy"] >= 1 - metrics["eval_replaced_fraction"] - 0.02  # at least the "all original" rate
    assert "Defaults for an encoder trained from scratch with ELECTRA: --learning_rate 0.002, --mlm_probability 0.15" in log
    assert "eval MLM loss" in log and "unigram plateau" in log  # the generator's loss against the plateau, at each evaluation
    record = json.loads((out / "hfssl.json").read_text())
    assert record["lineage"]["pretext"] == "electra" and record["generator_layers"] == 1
    assert record["options"]["masking"]["objective"] == "electra" and record["options"]["masking"]["mlm_probability"] == 0.15
    assert record["metrics"]["left_unigram_plateau"] == metrics["left_unigram_plateau"]


@pytest.mark.slow
def test_saved_model_is_the_trained_discriminator_encoder_only(trained):
    out, _, _ = trained
    saved = load_file(out / "model.safetensors")
    joint = load_file(out / "checkpoint-30" / "model.safetensors")  # the last step: what trained
    assert not any("generator" in k or "decoder" in k or "classifier" in k or k.startswith("head.") for k in saved)
    encoder = {k.removeprefix("discriminator.model."): v for k, v in joint.items() if k.startswith("discriminator.model.")}
    assert saved.keys() == encoder.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, encoder[name], rtol=0, atol=0)
    # one embedding matrix for both models, trained (not the generator's own, left behind)
    shared = joint["discriminator.model.embeddings.tok_embeddings.weight"]
    assert torch.equal(joint["generator.model.embeddings.tok_embeddings.weight"], shared)
    assert torch.equal(joint["generator.decoder.weight"], shared)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["ModernBertModel"] and "id2label" not in config


@pytest.mark.slow
def test_saved_model_loads_with_stock_classes_in_a_clean_process(trained):
    out, _, _ = trained
    code = f"""
import sys
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
encoder, info = AutoModel.from_pretrained({str(out)!r}, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info
classifier, info = AutoModelForSequenceClassification.from_pretrained({str(out)!r}, output_loading_info=True)
assert {{k.split(".")[0] for k in info["missing_keys"]}} <= {{"head", "classifier"}}, info  # only the classifier is fresh
assert classifier.config.num_labels == 2 and not info["unexpected_keys"], info
tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
print(classifier(**tokenizer("a test", return_tensors="pt")).logits.shape)
assert "hfssl" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.Size([1, 2])" in done.stdout


@pytest.mark.slow
def test_card_says_electra_and_its_code_runs(trained):
    out, metrics, _ = trained
    card = (out / "README.md").read_text()
    assert "pipeline_tag: feature-extraction" in card and "replaced-token-detection" in card
    assert "ELECTRA replaced-token detection: 15% of tokens masked" in card and "- **electra** on" in card
    assert f"| replaced-token detection accuracy | {metrics['eval_rtd_accuracy']:,.4g} |" in card
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(python_blocks(card)[0], "README.md", "exec"), {})
    assert "torch.Size([1," in printed.getvalue()


@pytest.mark.slow
def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, wordpiece):
    wordpiece.save_pretrained(tmp_path / "tok")  # one tokenizer for both runs
    args = (
        TINY_MLM
        + ELECTRA
        + ["--max_steps", "6", "--save_steps", "3", "--eval_steps", "3", "--tokenizer_name", str(tmp_path / "tok")]
    )
    mlm.main(args + ["--output_dir", str(tmp_path / "full")])
    part = tmp_path / "part"
    mlm.main(args + ["--output_dir", str(part)])
    for entry in part.iterdir():
        if entry.name != "checkpoint-3":
            subprocess.run(["rm", "-rf", str(entry)], check=True)
    mlm.main(args + ["--output_dir", str(part), "--resume_from_checkpoint", "true"])
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # masks and samples continue as uninterrupted
