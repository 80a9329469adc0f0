"""recipes/tsdae.py and hfssl.pretext.sentence_denoising: TSDAE domain adaptation of a (tiny) BERT encoder."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertConfig, BertModel, PreTrainedTokenizerFast

from conftest import load_recipe
from hfssl.pretext.sentence_denoising import DenoisingCollator, delete_words

tsdae = load_recipe("tsdae")
TINY = [
    "--max_corpus_documents",
    "1500",
    "--max_seq_length",
    "48",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "32",
    "--max_eval_samples",
    "64",
    "--learning_rate",
    "1e-3",
    "--logging_steps",
    "5",
    "--eval_steps",
    "20",
]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, wordpiece):
    """A small BERT encoder checkpoint with a WordPiece tokenizer trained on the embedded corpus."""
    path = tmp_path_factory.mktemp("encoder") / "tiny-bert"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece.backend_tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_encoder):
    out = tmp_path_factory.mktemp("tsdae") / "out"
    metrics = tsdae.main(
        TINY
        + [
            "--model_name_or_path",
            tiny_encoder,
            "--output_dir",
            str(out),
            "--max_steps",
            "60",
            "--save_strategy",
            "steps",
            "--save_steps",
            "60",
        ]
    ).metrics
    return out, metrics


def test_delete_words_keeps_order_and_at_least_one_word():
    rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in range(1000))
    kept = delete_words(text, 0.6, rng).split()
    assert 0.35 < len(kept) / 1000 < 0.45  # about 40% survive
    assert kept == sorted(kept, key=lambda w: int(w[1:]))  # original order
    assert all(len(delete_words("one two", 0.999, rng).split()) >= 1 for _ in range(50))
    assert delete_words("", 0.6, rng) == ""


def test_collator_pairs_damaged_input_with_the_original(tiny_encoder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    rows = [{"text": "return the first item of the list or none when it is empty"}, {"text": "open a file"}]
    batch = DenoisingCollator(tokenizer, "text", deletion_ratio=0.6, max_length=32, seed=0)(rows)
    assert batch["target_input_ids"].shape[0] == batch["input_ids"].shape[0] == 2
    sources, targets = batch["attention_mask"].sum(1), batch["target_attention_mask"].sum(1)
    assert (sources <= targets).all() and sources[0] < targets[0]  # words were deleted from the long sentence
    again = DenoisingCollator(tokenizer, "text", deletion_ratio=0.6, max_length=32, seed=0)(rows)
    assert torch.equal(batch["input_ids"], again["input_ids"])  # the noise follows the seed
    # a text longer than max_length: the encoder only sees words that the decoder is asked to rebuild
    long = {"text": " ".join(f"word{i}" for i in range(200))}
    cut = DenoisingCollator(tokenizer, "text", deletion_ratio=0.6, max_length=32, seed=0)([long])
    source = set(tokenizer.decode(cut["input_ids"][0], skip_special_tokens=True).replace(" ", "").split("word"))
    target = set(tokenizer.decode(cut["target_input_ids"][0], skip_special_tokens=True).replace(" ", "").split("word"))
    assert source <= target and len(source) < len(target)


@pytest.mark.slow
def test_loss_falls_and_encoder_is_saved_without_the_decoder(adapted, tiny_encoder):
    out, metrics = adapted
    history = json.loads((out / "checkpoint-60" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    assert metrics["eval_loss"] < np.log(2000) - 1.0  # well below guessing among the 2,000-token vocabulary
    before, after = AutoModel.from_pretrained(tiny_encoder), AutoModel.from_pretrained(out)
    saved = load_file(out / "model.safetensors")
    assert set(saved) == set(before.state_dict())  # the encoder only: no decoder, cross-attention or LM head
    for name, tensor in after.state_dict().items():
        assert torch.equal(tensor, saved[name])
    changed = [n for n, t in before.state_dict().items() if not torch.equal(t, after.state_dict()[n])]
    assert "encoder.layer.0.attention.self.query.weight" in changed
    assert not (out / "denoiser.safetensors").exists() and (out / "checkpoint-60" / "denoiser.safetensors").exists()


@pytest.mark.slow
def test_record_card_and_transfer(adapted, tiny_encoder, tmp_path):
    out, metrics = adapted
    record = json.loads((out / "hfssl.json").read_text())
    assert record["lineage"]["pretext"] == "tsdae" and record["lineage"]["base_model"] == tiny_encoder
    assert record["options"]["denoising"]["deletion_ratio"] == 0.6
    assert record["metrics"]["train_sentences"] == 60 * 16
    card = (out / "README.md").read_text()
    assert "TSDAE" in card and "60%" in card and "reconstruction loss" in card and "pipeline_tag: feature-extraction" in card
    # the adapted encoder is what hfssl's fine-tuning recipe starts from, lineage included
    fit = (
        load_recipe("finetune_text")
        .main(
            [
                "--model_name_or_path",
                str(out),
                "--max_steps",
                "4",
                "--output_dir",
                str(tmp_path / "ft"),
                "--per_device_train_batch_size",
                "8",
            ]
        )
        .fit
    )
    assert 0 <= fit.eval_results["eval_accuracy"] <= 1
    parent = json.loads((tmp_path / "ft" / "hfssl.json").read_text())["lineage"]["parent"]
    assert parent["pretext"] == "tsdae"


@pytest.mark.slow
def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, tiny_encoder):
    args = TINY + [
        "--model_name_or_path",
        tiny_encoder,
        "--max_steps",
        "12",
        "--save_strategy",
        "steps",
        "--save_steps",
        "6",
        "--eval_steps",
        "6",
        "--seed",
        "5",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    tsdae.main(args + ["--output_dir", str(full)])
    tsdae.main(args + ["--output_dir", str(part)])
    for entry in part.iterdir():  # an interrupted run: only checkpoint-6 is left
        if entry.name != "checkpoint-6":
            subprocess.run(["rm", "-rf", str(entry)], check=True)
    tsdae.main(args + ["--output_dir", str(part), "--resume_from_checkpoint", "true"])
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--model_name_or_path is required"),
        (["--model_name_or_path", "{encoder}", "--deletion_ratio", "1.5"], "--deletion_ratio must be in"),
        (["--model_name_or_path", "{tmp}/no_such_model"], "does not exist"),
        (["--model_name_or_path", "{tmp}/adapter"], "is a LoRA adapter"),
        (["--model_name_or_path", "{encoder}", "--train_file", "{tmp}/missing.txt"], "--train_file .* does not exist"),
        (["--model_name_or_path", "{encoder}", "--max_seq_length", "4096"], "--max_seq_length 4096 is beyond"),
        (["--model_name_or_path", "{tmp}/distilbert"], "TSDAE ties a decoder to the encoder.*'distilbert'"),
        (["--model_name_or_path", "{encoder}", "--train_file", "{tmp}/blank.jsonl"], "no non-blank text in column 'text'"),
        (["--model_name_or_path", "{encoder}", "--remove_unused_columns", "true"], "--remove_unused_columns .* must stay false"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(tmp_path, tiny_encoder, flags, message):
    from transformers import DistilBertConfig, DistilBertModel

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        tmp_path / "distilbert"
    )
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "   "}\n{"text": null}\n' * 20)
    out = tmp_path / "out"
    flags = [f.format(tmp=tmp_path, encoder=tiny_encoder) for f in flags]
    with pytest.raises(ValueError, match=message):
        tsdae.main(TINY + flags + ["--output_dir", str(out), "--max_steps", "2"])
    assert not out.exists()


@pytest.mark.slow
def test_pipeline_adapts_then_fine_tunes(tmp_path, tiny_encoder, capsys):
    import yaml

    pipeline = load_recipe("pipeline")
    config = tmp_path / "p.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "run"),
                "stages": [
                    {
                        "name": "adapt",
                        "recipe": "tsdae",
                        "options": {
                            "model_name_or_path": tiny_encoder,
                            "max_steps": 4,
                            "max_corpus_documents": 300,
                            "max_eval_samples": 16,
                        },
                    },
                    {"name": "classify", "recipe": "finetune_text", "from": "adapt", "options": {"max_steps": 4}},
                ],
            }
        )
    )
    results = pipeline.main([str(config)]).stages
    assert "adapt: tsdae, reconstruction loss" in capsys.readouterr().out
    assert 0 <= results["classify"].metrics["eval_accuracy"] <= 1
    child = json.loads((tmp_path / "run" / "classify" / "hfssl.json").read_text())
    assert child["lineage"]["parent"]["pretext"] == "tsdae"


def test_saving_writes_the_given_state_dict_not_the_live_weights(tmp_path, tiny_encoder):
    """Under FSDP / DeepSpeed the Trainer hands `_save` a gathered state dict: that one must be written."""
    from transformers import AutoTokenizer, TrainingArguments

    from hfssl.pretext.sentence_denoising import SentenceDenoiser, SentenceDenoisingTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    model = SentenceDenoiser(tiny_encoder, max_seq_length=32)
    trainer = SentenceDenoisingTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none"),
        data_collator=DenoisingCollator(tokenizer, "text"),
        processing_class=tokenizer,
    )
    gathered = {k: v.detach().clone() + 1.0 for k, v in model.state_dict().items()}
    trainer._save(str(tmp_path / "out"), state_dict=gathered)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    prefix = model.encoder_prefix
    assert saved and all(torch.equal(saved[k], gathered[prefix + k]) for k in saved)
    assert not (tmp_path / "out" / "denoiser.safetensors").exists()  # a final save keeps the encoder only
    with pytest.raises(RuntimeError, match="No encoder weights"):
        trainer._save(str(tmp_path / "bad"), state_dict={"unrelated.weight": torch.zeros(1)})
