from __future__ import annotations

import pytest

from hfssl.args import MaskingArguments, RunArguments, TextDataArguments, TextModelArguments, parse_args

TYPES = (TextDataArguments, TextModelArguments, MaskingArguments, RunArguments)


def test_precedence_defaults_yaml_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.002\nmax_seq_length: 64\nreport_to: none\ninclude_num_input_tokens_seen: non_padding\n")
    data, model, masking, run = parse_args(
        TYPES,
        [str(cfg), "--max_seq_length", "32", "--output_dir", str(tmp_path / "o")],
        defaults={"learning_rate": 1e-4, "max_steps": 7, "max_seq_length": 128},
    )
    assert run.learning_rate == 0.002  # YAML beats the recipe default
    assert data.max_seq_length == 32  # CLI beats YAML
    assert run.max_steps == 7  # recipe default beats the dataclass default
    assert masking.mlm_probability == 0.15  # dataclass default
    assert run.include_num_input_tokens_seen == "non_padding"


def test_unknown_yaml_key_fails(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args(TYPES, [str(cfg), "--output_dir", str(tmp_path)])


def test_unknown_cli_flag_fails(tmp_path):
    with pytest.raises(ValueError, match="Could not parse"):
        parse_args(TYPES, ["--mlm_probabilty", "0.2", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mlm_probability", "0"], "--mlm_probability"),
        (["--mlm_probability", "1.0"], "--mlm_probability"),
        (["--mask_replace_prob", "0.9", "--random_replace_prob", "0.2"], "must not exceed 1"),
        (["--model_preset", "huge"], "--model_preset"),
        (["--max_seq_length", "0"], "--max_seq_length"),
        (["--max_train_samples", "-3"], "--max_train_samples"),
        (["--validation_split_percentage", "100"], "--validation_split_percentage"),
        (["--tokenizer_type", "unigram"], "--tokenizer_type"),
        (["--dataset_name", "x", "--train_file", "y.txt"], "--dataset_name or --train_file"),
        (["--model_name_or_path", "x", "--model_preset", "tiny"], "not both"),
    ],
)
def test_bad_options_name_the_flag(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(TYPES, flags + ["--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_none_on_the_command_line_sets_an_optional_option_to_none(tmp_path):
    _, model, _, _ = parse_args(
        TYPES, ["--pretraining_dropout", "none", "--output_dir", str(tmp_path)], defaults={"pretraining_dropout": 0.0}
    )
    assert model.pretraining_dropout is None
