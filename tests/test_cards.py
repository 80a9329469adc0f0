"""Model cards (hfssl/cards.py, `hfssl card`): complete, truthful to hfssl.json, and their code runs as written."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import shutil

import pytest
from huggingface_hub import ModelCard

from conftest import ROOT
from hfssl.args import RunArguments
from hfssl.cards import output_card, refresh_card, write_card
from hfssl.cli import main as hfssl_cli
from recipe_outputs import KINDS, check_card, check_printed_prediction, output_files, python_blocks, tiny_output


def record_of(out) -> dict:
    return json.loads((out / "hfssl.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_every_card_is_complete_and_reports_the_final_metrics(kind):
    out = tiny_output(kind)
    record = record_of(out)
    card = check_card((out / "README.md").read_text(), output_files(out), record)
    assert ModelCard.load(out / "README.md").data.to_dict() == card.data.to_dict()  # parses back from the file
    text = str(card)
    assert (
        f'"{record["options"]["training"]["output_dir"]}"' in python_blocks(text)[0]
    )  # not pushed: the code loads the directory
    for section in ("## How to use", "## Training procedure", "## Results", "## Plots", "## Lineage", "## Limitations"):
        assert section in text, section
    assert f"| hardware | {record['hardware']} |" in text and f"| steps | {record['metrics']['train_steps']:,} |" in text
    if kind == "mlm":
        assert (
            f"| tokens seen | {record['metrics']['train_tokens']:,} |" in text and "30% of tokens selected" in text
        )  # the from-scratch default
    if kind == "mae":
        assert (
            "mask ratio 0.75" in text
            and "| images seen |" in text
            and "![original | masked | reconstruction](reconstructions.png)" in text
        )
    if kind.endswith("-lora"):
        assert "peft" in card.data.tags and "adapter_model.safetensors" in text and "AutoPeftModel" in text
    if kind.startswith(("text-", "image-", "minilm-")):  # the plain route only: no hfssl code, no workaround
        code = python_blocks(text)[0].replace(record["options"]["training"]["output_dir"], "OUT")
        assert "hfssl" not in code and 'pipeline("' in code
        assert ("trust_remote_code=True" in code) == kind.startswith("minilm-mean")  # custom code only where it ships
        assert "![confusion matrix](confusion_matrix.png)" in text and "| training examples |" in text
    if kind == "minilm-mean-lora":
        assert "`mean_pooled.py`" in text and "refuses to load" in text and "mean_pooled.py" in output_files(out)
    if kind.startswith(("text-", "image-")):
        parent = "masked-lm" if kind.startswith("text-") else "mae"
        assert f"- **{parent}** on" in text  # the lineage goes back to the pretraining stage


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_card_code_runs_as_written_on_the_output_directory(kind):
    out = tiny_output(kind)
    blocks = python_blocks((out / "README.md").read_text())
    assert len(blocks) == 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[0], f"{kind}/README.md", "exec"), {})
    shown = printed.getvalue()
    if kind == "mlm":
        assert "'token_str'" in shown
    elif kind == "mae":
        assert "torch.Size([1, 32])" in shown
    else:
        check_printed_prediction(kind, shown)


def test_hfssl_card_re_renders_what_the_recipe_wrote(tmp_path, capsys):
    out = tmp_path / "lora"
    shutil.copytree(tiny_output("text-lora"), out)
    written = (out / "README.md").read_text()
    (out / "README.md").unlink()
    capsys.readouterr()  # drop what building the output printed (when this test is the first to need it)
    hfssl_cli(["card", str(out)])
    assert capsys.readouterr().out.strip() == f"Wrote {out / 'README.md'}"
    assert (out / "README.md").read_text() == written  # the card is a function of hfssl.json and the files

    hfssl_cli(["card", str(out), "--repo-id", "me/tiny-lora"])
    text = (out / "README.md").read_text()
    assert 'pipeline("text-classification", model="me/tiny-lora")' in text
    assert ModelCard.load(out / "README.md").data.model_name == "me/tiny-lora"
    check_card(text, output_files(out), record_of(out))

    (out / "merged").rename(tmp_path / "elsewhere")  # a card only names files that are there
    hfssl_cli(["card", str(out)])
    assert "merged" not in (out / "README.md").read_text()
    with pytest.raises(SystemExit, match=r"hfssl card: .* has no hfssl.json"):
        hfssl_cli(["card", str(tmp_path / "elsewhere")])


def test_push_re_renders_an_unedited_card_and_keeps_an_edited_one(tmp_path, caplog):
    out = tmp_path / "mlm"
    shutil.copytree(tiny_output("mlm"), out, ignore=shutil.ignore_patterns("checkpoint-*"))
    assert refresh_card(out, "me/a")
    assert '"me/a"' in (out / "README.md").read_text()
    assert not refresh_card(out, "me/a")  # already rendered for this repo
    assert refresh_card(out, "me/b")  # a card rendered for another repo is still unedited
    assert '"me/b"' in (out / "README.md").read_text() and '"me/a"' not in (out / "README.md").read_text()

    edited = (out / "README.md").read_text().replace("## Limitations", "## Limitations\n\nOur own words.")
    (out / "README.md").write_text(edited)
    with caplog.at_level(logging.WARNING, logger="hfssl"):
        assert not refresh_card(out, "me/c")
    assert (out / "README.md").read_text() == edited
    assert f"hfssl card {out} --repo-id me/c" in caplog.text


def test_metadata_names_hub_models_and_datasets_and_follows_the_card_options(minilm_path):
    out = tiny_output("text-full")
    record = copy.deepcopy(record_of(out))
    card = output_card(record, out, "me/tiny")
    assert card.data.base_model is None and card.data.datasets is None  # started from a local output, on embedded data
    record["lineage"]["base_model"] = "outputs/mlm"  # an hfssl output (it has a parent stage), though it looks like a Hub id
    assert output_card(record, out, "me/tiny").data.base_model is None
    record["lineage"]["parent"] = {**record["lineage"]["parent"], "repo_id": "me/pretrained"}  # ...pushed to the Hub
    card = output_card(record, out, "me/tiny")
    assert card.data.base_model == "me/pretrained" and "[me/pretrained](https://huggingface.co/me/pretrained)" in str(card)

    record["lineage"].update(base_model=minilm_path, parent=None)  # the packaged copy of a Hub model is named by its Hub id
    record["options"]["data"].update(dataset_name="stanfordnlp/imdb", dataset_config_name="plain_text")
    record["options"]["training"].update(card_license="mit", card_language="fr")
    card = output_card(record, out, "me/tiny")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "[sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)" in str(card)
    assert card.data.datasets == ["stanfordnlp/imdb"] and card.data.license == "mit" and card.data.language == "fr"
    assert {(r.dataset_type, r.dataset_config) for r in card.data.eval_results} == {("stanfordnlp/imdb", "plain_text")}

    record["lineage"]["base_model"] = "google-bert/bert-base-uncased"
    record["options"]["data"]["dataset_name"] = str(out)  # a local dataset directory is not a Hub data set
    record["options"]["training"]["card_language"] = None
    card = output_card(record, out, "me/tiny")
    assert card.data.base_model == "google-bert/bert-base-uncased" and card.data.datasets is None and card.data.language is None


@pytest.mark.parametrize("option, value", [("card_license", "Apache 2.0"), ("card_language", "English")])
def test_card_options_are_validated(tmp_path, option, value):
    with pytest.raises(ValueError, match=f"--{option} '{value}'"):
        RunArguments(output_dir=str(tmp_path), **{option: value})


EXAMPLES = ROOT / "docs" / "examples"


@pytest.mark.parametrize("kind", ["mlm", "mae", "text-full", "text-lora", "image-full"])
def test_docs_examples_are_complete_cards(kind):
    folder = EXAMPLES / kind
    text = (folder / "README.md").read_text()
    record = record_of(folder)
    repo_files = set((folder / "files.txt").read_text().split())
    assert {"README.md", "hfssl.json"} <= repo_files and any(f.endswith(".safetensors") for f in repo_files)
    card = check_card(text, repo_files, record)
    assert card.data.model_name == f"your-name/hfssl-example-{kind}"
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (folder / image).stat().st_size > 0, image  # the plots are shown next to the example
    assert f"[{kind}]({kind}/README.md)" in (EXAMPLES / "README.md").read_text()


def test_card_says_when_trust_remote_code_was_on(tmp_path):
    """The card warns that custom modeling code ran (and is needed) exactly when the run allowed it."""
    example = ROOT / "docs" / "examples" / "mae"
    folder = tmp_path / "mae"
    shutil.copytree(example, folder)
    record = json.loads((folder / "hfssl.json").read_text())
    assert "trust_remote_code=True" not in str(output_card(record, folder))
    record["options"]["model"]["trust_remote_code"] = True
    assert "Trained with `trust_remote_code=True`" in str(output_card(record, folder))


def _stand_in_left_out_files(folder, card: str) -> None:
    """Write stand-ins for the files of the example's repo (files.txt) that docs/examples leaves out and the card reads
    (the weights, config.json, tokenizer_config.json), holding what the committed card says of them."""
    left_out = set((folder / "files.txt").read_text().split()) - {p.name for p in folder.iterdir()}
    count = re.search(r"^\| model \| ([\d,]+) (?:encoder )?parameters", card, re.M)
    if "model.safetensors" in left_out and count:  # a header-only safetensors file: the card counts the weights' shapes
        header = json.dumps({"weight": {"dtype": "F32", "shape": [int(count[1].replace(",", ""))], "data_offsets": [0, 0]}})
        (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    architecture = re.search(r"The model is a plain `(\w+)`", card)
    if "config.json" in left_out and architecture:
        (folder / "config.json").write_text(json.dumps({"architectures": [architecture[1]]}))
    mask = re.search(r"of which \S+ become `([^`]+)`", card)
    if "tokenizer_config.json" in left_out and mask:
        (folder / "tokenizer_config.json").write_text(json.dumps({"mask_token": mask[1]}))


@pytest.mark.parametrize("kind", sorted(p.parent.name for p in EXAMPLES.glob("*/hfssl.json")))
def test_docs_examples_render_from_the_templates_as_committed(tmp_path, kind):
    """Each committed example card is what the templates render now from its hfssl.json and files, so they cannot drift."""
    folder = tmp_path / kind
    shutil.copytree(EXAMPLES / kind, folder)
    committed = (folder / "README.md").read_text(encoding="utf-8")
    _stand_in_left_out_files(folder, committed)
    rendered = write_card(folder, f"your-name/hfssl-example-{kind}").read_text(encoding="utf-8")
    version = re.compile(r"^Produced with hfssl \S+, ", re.M)  # the one thing a re-render may change
    assert version.sub("Produced with hfssl VERSION, ", rendered) == version.sub("Produced with hfssl VERSION, ", committed)


def test_the_training_data_licences_go_in_the_card(tmp_path, capsys):
    out = tmp_path / "clip"
    shutil.copytree(tiny_output("clip"), out)
    assert "training data licences" not in (out / "README.md").read_text()
    record = record_of(out)
    record["options"]["training"].update(
        card_license="cc-by-sa-4.0", card_data_licenses="OpenMoji: CC-BY-SA-4.0; Fluent Emoji: MIT"
    )
    (out / "hfssl.json").write_text(json.dumps(record))
    hfssl_cli(["card", str(out)])
    text = (out / "README.md").read_text()
    assert "| training data licences | OpenMoji: CC-BY-SA-4.0; Fluent Emoji: MIT |" in text
    assert ModelCard.load(out / "README.md").data.license == "cc-by-sa-4.0"
