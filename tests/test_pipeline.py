"""The one-config pipeline: a tiny pretrain -> transfer run end to end, and bad pipeline files failing before any stage runs."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import TINY_MLM, load_recipe
from hfssl.cli import main as hfssl_main

pipeline = load_recipe("pipeline")

TINY_PRETRAIN = {
    **dict(zip(TINY_MLM[::2], TINY_MLM[1::2])),
    "--max_steps": 4,
    "--eval_steps": 4,
    "--save_steps": 4,
    "--max_corpus_documents": 300,
    "--disable_tqdm": True,
}
TINY_PRETRAIN = {k.removeprefix("--"): v for k, v in TINY_PRETRAIN.items()}
TINY_TRANSFER = dict(
    train_samples_per_class=8,
    max_eval_samples=48,
    max_seq_length=48,
    max_steps=4,
    per_device_train_batch_size=16,
    eval_strategy="no",
    save_strategy="no",
    disable_tqdm=True,
)


def _write(path, stages, **top) -> str:
    path.write_text(yaml.safe_dump({**top, "stages": stages}, sort_keys=False))
    return str(path)


@pytest.mark.slow
def test_two_stage_pipeline_hands_the_encoder_on_and_records_the_lineage(tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "tiny_mlm.yaml").write_text(yaml.safe_dump({**TINY_PRETRAIN, "max_steps": 100}))  # a recipe preset...
    config = _write(
        tmp_path / "p.yaml",
        [
            {"name": "pretrain", "recipe": "mlm", "config": "tiny_mlm.yaml", "options": {"max_steps": 4}},  # ...and an override
            {
                "name": "probe",
                "recipe": "finetune_text",
                "from": "pretrain",
                "options": {**TINY_TRANSFER, "strategy": "linear_probe", "learning_rate": 1e-2},
            },
        ],
        output_dir=str(out),
    )
    results = pipeline.main([config]).stages
    printed = capsys.readouterr().out
    assert set(results) == {"pretrain", "probe"} and 0 <= results["probe"].metrics["eval_accuracy"] <= 1
    assert "probe: finetune_text (from pretrain), accuracy 0." in printed and str(out / "probe") in printed

    child = json.loads((out / "probe" / "hfssl.json").read_text())
    assert child["lineage"]["base_model"] == str(out / "pretrain") and child["lineage"]["strategy"] == "linear_probe"
    assert child["lineage"]["parent"] == json.loads((out / "pretrain" / "hfssl.json").read_text())["lineage"]
    assert child["lineage"]["parent"]["pretext"] == "masked-lm"
    lineage = (out / "probe" / "README.md").read_text().split("## Lineage", 1)[1]
    assert "**masked-lm**" in lineage and str(out / "pretrain") in lineage  # the card shows both stages
    resolved = yaml.safe_load((out / "pipeline.yaml").read_text())["stages"]
    assert resolved[1]["options"]["model_name_or_path"] == str(out / "pretrain")
    assert resolved[0]["options"]["max_steps"] == 4 and resolved[0]["options"]["vocab_size"] == TINY_PRETRAIN["vocab_size"]


MLM = {"name": "a", "recipe": "mlm"}
PROBE = {"name": "b", "recipe": "finetune_text", "from": "a"}


@pytest.mark.parametrize(
    "stages, top, message",
    [
        (
            [{**MLM, "recipe": "mlmm"}],
            {},
            r"stage 'a': `recipe` must be one of mlm, tsdae, finetune_text, mim, finetune_image, clip, got 'mlmm'",
        ),
        (
            [{**MLM, "options": {"max_stpes": 3}}],
            {},
            r"stage 'a' \(mlm\): unknown option 'max_stpes' \(did you mean max_steps\?\)",
        ),
        ([{**MLM, "form": "x"}], {}, r"stage 'a': unknown key\(s\) form; a stage has name, recipe, from, config, options"),
        ([{**PROBE, "from": "c"}, {**MLM, "name": "c"}], {}, r"stage 'b': `from: c` names a later stage"),
        ([MLM, {**PROBE, "from": "z"}], {}, r"stage 'b': `from: z` names no stage; .*\(here: a\)"),
        ([MLM, {**PROBE, "from": "b"}], {}, r"stage 'b': `from: b` names the stage itself"),
        ([{**MLM, "config": "nope.yaml"}], {}, r"stage 'a': `config` nope.yaml does not exist"),
        ([MLM, {"name": "c", "recipe": "clip", "from": "a"}], {}, r"stage 'c': clip starts from two towers: `from: \{text"),
        (
            [MLM, {"name": "c", "recipe": "clip", "from": {"image": "a"}}],
            {},
            r"stage 'c': `from: a` is an output of mlm \(modality: text\), but clip takes its image tower there",
        ),
        (
            [{**MLM, "recipe": "mim"}, PROBE],
            {},
            r"stage 'b': `from: a` is an output of mim \(modality: image\), but finetune_text works on text",
        ),
        (
            [MLM, {**PROBE, "options": {"strategy": "lora"}}, {**PROBE, "name": "c", "from": "b"}],
            {},
            r"stage 'c': `from: b` writes a LoRA adapter",
        ),
        (
            [MLM, {**PROBE, "options": {"model_name_or_path": "x"}}],
            {},
            r"stage 'b': give either `from: a` or the option model_name_or_path",
        ),
        ([MLM, {**PROBE, "options": {"strategy": "bogus"}}], {}, r"stage 'b' \(finetune_text\): --strategy must be one of"),
        ([MLM, {**MLM, "recipe": "mim"}], {}, r"stage 'a': an earlier stage has the same name"),
        ([{**MLM, "name": "../up"}], {}, r"stage 1 needs a `name` made of letters"),
        ([MLM, {**PROBE, "options": {"output_dir": "{out}/a"}}], {}, r"stages 'a' and 'b' have the same output_dir"),
        ([], {}, r"`stages` must be a non-empty list"),
        (
            [MLM],
            {"epochs": 3},
            r"unknown top-level key\(s\) epochs; a pipeline file holds stages, output_dir, overwrite_output_dir",
        ),
        (
            [MLM, {**PROBE, "name": "finished"}],
            {},
            r"stage 'finished' \(finetune_text\): --output_dir .*finished already holds a model",
        ),
    ],
)
def test_bad_pipeline_fails_before_any_stage_runs(tmp_path, capsys, stages, top, message):
    out = tmp_path / "run"
    (tmp_path / "run" / "finished").mkdir(parents=True)
    (tmp_path / "run" / "finished" / "hfssl.json").write_text("{}")  # a finished output, which no stage may replace silently
    stages = yaml.safe_load(yaml.safe_dump(stages).replace("{out}", str(out)))
    with pytest.raises(SystemExit) as stopped:  # one line on stderr and exit status 2, as argparse does
        hfssl_main(["run", _write(tmp_path / "p.yaml", stages, **top), "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("hfssl run: error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert sorted(p.name for p in out.iterdir()) == ["finished"]  # nothing written


def test_a_clip_stage_takes_its_towers_from_a_text_and_an_image_stage(tmp_path):
    from hfssl.pipeline import load_pipeline

    stages = [
        {"name": "text", "recipe": "mlm", "options": {"architecture": "bert"}},
        {"name": "image", "recipe": "mim"},
        {"name": "align", "recipe": "clip", "from": {"text": "text", "image": "image"}},
    ]
    loaded = load_pipeline([_write(tmp_path / "p.yaml", stages), "--output_dir", str(tmp_path / "run")])
    align = loaded.stages[-1]
    assert align.options["text_model_name_or_path"] == str(tmp_path / "run" / "text")
    assert align.options["image_model_name_or_path"] == str(tmp_path / "run" / "image")


def test_pipeline_needs_its_file_first(tmp_path):
    with pytest.raises(ValueError, match=r"Give the pipeline file first: `hfssl run pipeline.yaml"):
        pipeline.main(["--output_dir", str(tmp_path)])
