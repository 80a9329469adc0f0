"""Bad input to every recipe: a ValueError naming the problem, raised before training, and nothing written.

Each case runs a recipe's `main()` with the Trainer's `train` replaced by a failure, so a case that
only fails once training has started fails here. The whole test directory (data files and any
existing output directory) must be byte-identical afterwards, and a new --output_dir must not exist.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from conftest import load_recipe

RECIPES = {name: load_recipe(name) for name in ("mlm", "mim", "finetune_text", "finetune_image")}
# Enough to stay fast if a case ever got further than it should.
BASE = {
    "mlm": ["--max_steps", "2", "--max_corpus_documents", "200", "--vocab_size", "300"],
    "mim": ["--max_steps", "2", "--max_train_samples", "64"],
    "finetune_text": ["--max_steps", "2"],
    "finetune_image": ["--max_steps", "2", "--max_train_samples", "64"],
}


def _png(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _images(root: Path, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        for i in range(count):
            _png(root / name / f"{i}.png", seed=i)


def _nan_images(root: Path) -> None:
    """Float (mode F) TIFFs in two class folders; one has a NaN pixel."""
    for i in range(6):
        pixels = np.random.default_rng(i).random((8, 8), dtype=np.float32)
        if i == 4:
            pixels[3, 3] = np.nan
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "ab"[i % 2] / f"{i}.tiff")


def _adapter(root: Path) -> None:
    root.mkdir()
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "bert-base-uncased"}))
    (root / "adapter_model.safetensors").write_bytes(b"not used")


def _bert(root: Path) -> None:
    transformers.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64).save_pretrained(
        root
    )


def _csv(text: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(text, encoding="utf-8")


LABELED = "text,topic\n" + "".join(f"{w} sentence number {i},{w}\n" for w in ("alpha", "beta") for i in range(6))

# Everything a case may refer to as {name}: made on demand in the test's tmp_path.
MAKE: dict[str, Callable[[Path], None]] = {
    "empty.txt": lambda p: p.write_bytes(b""),
    "binary.txt": lambda p: p.write_bytes(bytes(range(256)) * 16),
    "latin1.txt": lambda p: p.write_bytes("Un café crème, s'il vous plaît.\n".encode("latin-1") * 40),
    "blank.txt": _csv("\n   \n\t\n" * 20),
    "short.txt": _csv("Return the list.\nA short line of text.\nAnd one more.\n"),
    "bad.jsonl": _csv('{"text": "a fine line"}\n{"text": not quoted}\n'),
    "body.csv": _csv("body,label\nsome text here,1\nmore text there,0\n"),
    "numbers.csv": _csv("n,m\n1,2\n3,4\n5,6\n"),
    "sheet.xlsx": lambda p: p.write_bytes(b"PK\x03\x04 a spreadsheet"),
    "broken.yaml": _csv("max_steps: [1, 2\nlearning_rate: 0.1\n"),
    "list.yaml": _csv("- max_steps\n- 3\n"),
    "typo.yaml": _csv("max_step: 3\n"),
    "wrongtype.yaml": _csv("max_steps: lots\n"),
    "adapter": _adapter,
    "notamodel": lambda p: (p.mkdir(), (p / "notes.txt").write_text("no config here")),
    "bert": _bert,
    "nomask": lambda p: _nomask_tokenizer(p),
    "finished": lambda p: (p.mkdir(), (p / "hfssl.json").write_text("{}\n"), (p / "model.safetensors").write_bytes(b"weights")),
    "unfinished": lambda p: (
        (p / "checkpoint-5").mkdir(parents=True),
        (p / "checkpoint-5" / "trainer_state.json").write_text("{}"),
    ),
    "halfsaved": lambda p: (p.mkdir(), (p / "model.safetensors").write_bytes(b"weights"), (p / "config.json").write_text("{}")),
    "killed_while_saving": lambda p: (
        (p / "checkpoint-5").mkdir(parents=True),
        (p / "checkpoint-5" / "model.safetensors").write_bytes(b"w"),
    ),
    "a_file": _csv("I am a file, not a directory.\n"),
    "nan_images": _nan_images,
    "one_image": lambda p: _png(p / "only.png"),
    "no_images": lambda p: (p.mkdir(), (p / "readme.txt").write_text("no images here")),
    "corrupt_images": lambda p: (_images(p, {"a": 3, "b": 3}), (p / "b" / "bad.png").write_bytes(b"\x89PNG\r\n garbage")),
    "flat_images": lambda p: [_png(p / f"{i}.png", seed=i) for i in range(6)],
    "one_class": lambda p: _images(p, {"cats": 6}),
    "two_classes": lambda p: _images(p, {"cats": 4, "dogs": 4}),
    "unseen_classes": lambda p: _images(p, {"cats": 2, "birds": 2}),
    "floats.csv": _csv("text,label\n" + "".join(f"sentence {i},{v}\n" for i, v in enumerate([0.5, 1.7, 2.25, 0.5] * 3))),
    "lists.jsonl": _csv("".join(json.dumps({"text": f"sentence {i}", "label": [i % 2, 1]}) + "\n" for i in range(8))),
    "mixed.jsonl": _csv("".join(json.dumps({"text": f"sentence {i}", "label": [1, "two"][i % 2]}) + "\n" for i in range(8))),
    "holes.csv": _csv("text,label\n" + "".join(f"sentence {i},{'' if i % 3 == 0 else i % 2}\n" for i in range(9))),
    "header.csv": _csv("text,label\n"),
    "numtext.csv": _csv("n,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(8))),
    "labeled.csv": _csv(LABELED),
    "one_label.csv": _csv("text,label\n" + "".join(f"line {i},same\n" for i in range(8))),
    "plain.txt": _csv("just text\nwithout labels\n"),
}


def _nomask_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "the": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)


def _read_only(tmp_path: Path, existing: bool) -> Path:
    """A directory this user cannot write: mode 0555 for a normal user; root ignores modes, so /proc/sys there."""
    ro = tmp_path / "ro"
    ro.mkdir(exist_ok=True)
    if existing:
        (ro / "kept.txt").write_text("an earlier file\n")
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root
        ro.chmod(0o755)
        return Path("/proc/sys/kernel") if existing else Path("/proc/sys/hfssl-out")
    return ro if existing else ro / "out"


CASES = [
    # --- recipes/mlm.py: text files --------------------------------------------------------------------------------
    ("mlm", ["--train_file", "{empty.txt}"], r"--train_file: .*empty\.txt is empty"),
    ("mlm", ["--bf16_weights", "true", "--bf16", "false"], r"--bf16_weights true needs --bf16 true on a CPU in a single process"),
    (
        "mim",
        ["--bf16_weights", "true", "--gradient_accumulation_steps", "2"],
        r"--bf16_weights true needs .*without gradient accumulation",
    ),
    ("mlm", ["--train_file", "{binary.txt}"], r"--train_file: .*binary\.txt looks like a binary file"),
    ("mlm", ["--train_file", "{latin1.txt}"], r"--train_file: .*latin1\.txt is not UTF-8 text .*iconv"),
    ("mlm", ["--train_file", "{blank.txt}"], r"tokenizer training text is empty"),
    (
        "mlm",
        ["--train_file", "{short.txt}", "--max_seq_length", "64"],
        r"gives no example: not one full block of --max_seq_length 64",
    ),
    ("mlm", ["--train_file", "{bad.jsonl}"], r"Could not read --train_file/--validation_file \(.*bad\.jsonl\) as json"),
    (
        "mlm",
        ["--train_file", "{body.csv}", "--text_column", "content"],
        r"--text_column 'content' is not in the data; its columns are: body, label",
    ),
    ("mlm", ["--train_file", "{numbers.csv}"], r"Cannot tell which column holds the text \(n, m\); pass --text_column"),
    ("mlm", ["--train_file", "{numbers.csv}", "--text_column", "n"], r"--text_column 'n' holds int64 values, not text"),
    ("mlm", ["--train_file", "{sheet.xlsx}"], r"--train_file: unsupported file type\(s\) \.xlsx"),
    ("mlm", ["--train_file", "{short.txt}", "--validation_file", "{body.csv}"], r"--validation_file must have the same type"),
    ("mlm", ["--dataset_name", "no-such-user/no_such_dataset"], r"--dataset_name no-such-user/no_such_dataset: cannot load it"),
    # --- recipes/mlm.py: sizes and models --------------------------------------------------------------------------
    ("mlm", ["--max_seq_length", "0"], r"--max_seq_length must be a positive integer, got 0"),
    ("mlm", ["--max_seq_length", "-64"], r"--max_seq_length must be a positive integer, got -64"),
    ("mlm", ["--max_seq_length", "1000000000"], r"--max_seq_length 1000000000 is beyond the model's 512 positions"),
    ("mlm", ["--mlm_probability", "0"], r"--mlm_probability must be in \(0, 1\)"),
    ("mlm", ["--vocab_size", "0"], r"--vocab_size must be at least 64, got 0"),
    (
        "mlm",
        ["--config_overrides", "hidden_size=0"],
        r"--config_overrides 'hidden_size=0': hidden_size must be a positive integer",
    ),
    ("mlm", ["--config_overrides", "num_hidden_layers=-2"], r"num_hidden_layers must be a positive integer, got -2"),
    (
        "mlm",
        ["--config_overrides", "hidden_size=64,num_attention_heads=3"],
        r"hidden_size 64 is not a multiple of num_attention_heads 3",
    ),
    ("mlm", ["--config_overrides", "hiden_size=64"], r"--config_overrides 'hiden_size=64': .*hiden_size"),
    ("mlm", ["--model_name_or_path", "{tmp}/no_such_model"], r"--model_name_or_path .*no_such_model does not exist"),
    ("mlm", ["--model_name_or_path", "{adapter}"], r"--model_name_or_path .*adapter is a LoRA adapter, not a full model"),
    ("mlm", ["--model_name_or_path", "{notamodel}"], r"--model_name_or_path .*notamodel has no config\.json"),
    ("mlm", ["--tokenizer_name", "{nomask}"], r"tokenizer from .*nomask has no mask token"),
    ("mlm", ["--tokenizer_name", "{tmp}/no_such_tokenizer"], r"--tokenizer_name .*no_such_tokenizer: cannot load a tokenizer"),
    # --- options, YAML and run-level (through mlm.py; parsing and start_run are shared by all recipes) --------------
    ("mlm", ["--no_such_option", "3"], r"Could not parse options: unrecognized arguments: --no_such_option 3"),
    ("mlm", ["--max_steps", "ten"], r"argument --max_steps.*: invalid int value: 'ten'"),
    ("mlm", ["{broken.yaml}"], r"Config file .*broken\.yaml is not valid YAML: .*line 2"),
    ("mlm", ["{list.yaml}"], r"Config file .*list\.yaml must hold a mapping of option: value, got list"),
    ("mlm", ["{typo.yaml}"], r"Unknown option\(s\) in .*typo\.yaml: max_step"),
    ("mlm", ["{wrongtype.yaml}"], r"Config file .*wrongtype\.yaml: max_steps must be an integer, got 'lots'"),
    ("mlm", ["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be a positive integer, got 0"),
    ("mlm", ["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be a positive integer"),
    ("mlm", ["--max_steps", "0"], r"--max_steps must be a positive number of steps, or -1"),
    ("mlm", ["--max_steps", "-1", "--num_train_epochs", "0"], r"--num_train_epochs must be above 0"),
    ("mlm", ["--learning_rate", "-0.001"], r"--learning_rate must be 0 or more, got -0.001"),
    ("mlm", ["--learning_rate", "nan"], r"--learning_rate must be 0 or more, got nan"),
    ("mlm", ["--save_steps", "0"], r"--save_steps must be above 0"),
    ("mlm", ["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\), got -1"),
    ("mlm", ["--output_dir", "{a_file}"], r"--output_dir .*a_file is a file"),
    ("mlm", ["--output_dir", "{readonly_new}"], r"--output_dir .* is not writable: .* is read-only for this user"),
    ("mlm", ["--output_dir", "{readonly_existing}"], r"--output_dir .* is not writable: .* is read-only for this user"),
    ("mlm", ["--output_dir", "{finished}"], r"--output_dir .*finished already holds a model.*--overwrite_output_dir true"),
    (
        "mlm",
        ["--output_dir", "{unfinished}"],
        r"holds an unfinished run \(checkpoints but no hfssl\.json\).*--resume_from_checkpoint true",
    ),
    ("mlm", ["--output_dir", "{halfsaved}"], r"already holds model files \(model\.safetensors\) but no hfssl\.json"),
    ("mlm", ["--resume_from_checkpoint", "true"], r"--resume_from_checkpoint true: no complete checkpoint-\* folder"),
    (
        "mlm",
        ["--output_dir", "{killed_while_saving}", "--resume_from_checkpoint", "true"],
        r"no complete checkpoint-\* folder .*\(checkpoint-5 incomplete: stopped while saving\)",
    ),
    (
        "mlm",
        ["--resume_from_checkpoint", "{killed_while_saving}/checkpoint-5"],
        r"is not a complete checkpoint \(no trainer_state\.json",
    ),
    (
        "mlm",
        ["--resume_from_checkpoint", "{tmp}/no_such_checkpoint"],
        r"--resume_from_checkpoint .*no_such_checkpoint is not a checkpoint",
    ),
    ("mlm", ["--push_to_hub", "true", "--hub_model_id", "a/b/c"], r"--hub_model_id 'a/b/c' is not a repo id"),
    # --- recipes/mim.py ------------------------------------------------------------------------------------------
    (
        "mim",
        ["--train_dir", "{nan_images}"],
        r"Cannot read image .*4\.tiff: 1 of its 64 pixels are NaN or infinite.*--skip_corrupt_images",
    ),
    ("mim", ["--train_dir", "{corrupt_images}"], r"Cannot read image .*bad\.png.*--skip_corrupt_images true"),
    ("mim", ["--train_dir", "{no_images}"], r"--train_dir .*no_images holds no image files"),
    ("mim", ["--train_dir", "{tmp}/no_such_folder"], r"--train_dir .*no_such_folder is not a directory"),
    ("mim", ["--train_dir", "{one_image}"], r"Only 1 image found: at least 2 are needed"),
    ("mim", ["--image_size", "0"], r"--image_size must be a positive integer, got 0"),
    ("mim", ["--patch_size", "-4"], r"--patch_size must be a positive integer, got -4"),
    ("mim", ["--image_size", "16", "--patch_size", "32"], r"--image_size 16 is not divisible by --patch_size 32"),
    ("mim", ["--mask_ratio", "1.0"], r"--mask_ratio must be in \[0, 1\)"),
    ("mim", ["--num_channels", "2"], r"--num_channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
    (
        "mim",
        ["--model_name_or_path", "{bert}"],
        r"--model_name_or_path .*bert is a 'bert' model; masked-image pretraining needs a ViT",
    ),
    ("mim", ["--config_overrides", "decoder_hidden_size=0"], r"decoder_hidden_size must be a positive integer, got 0"),
    # --- recipes/finetune_text.py (the packaged MiniLM is the default model) ----------------------------------------
    (
        "finetune_text",
        ["--train_file", "{floats.csv}"],
        r"--label_column 'label' holds numbers with fractions \(0\.5, 1\.7, 2\.25",
    ),
    ("finetune_text", ["--train_file", "{lists.jsonl}"], r"--label_column 'label' holds list values such as \[0, 1\]"),
    ("finetune_text", ["--train_file", "{mixed.jsonl}"], r"--label_column 'label' mixes text and numbers"),
    ("finetune_text", ["--train_file", "{holes.csv}"], r"--label_column 'label' is empty in 3 training rows"),
    ("finetune_text", ["--train_file", "{header.csv}"], r"header\.csv holds no data rows"),
    (
        "finetune_text",
        ["--train_file", "{labeled.csv}"],
        r"--label_column 'label' is not in the data; its columns are: text, topic",
    ),
    ("finetune_text", ["--train_file", "{numtext.csv}", "--text_column", "n"], r"--text_column 'n' holds int64 values, not text"),
    ("finetune_text", ["--train_file", "{one_label.csv}"], r"single class \('same'\)"),
    ("finetune_text", ["--train_file", "{plain.txt}"], r"labeled text needs a \.csv, \.json, \.jsonl or \.parquet file"),
    ("finetune_text", ["--train_file", "{latin1.txt}"], r"latin1\.txt is not UTF-8 text"),
    ("finetune_text", ["--max_seq_length", "100000"], r"--max_seq_length 100000 is beyond the model's 512 positions"),
    ("finetune_text", ["--model_name_or_path", "{adapter}"], r"is a LoRA adapter, not a full model"),
    ("finetune_text", ["--lora_r", "0", "--strategy", "lora"], r"--lora_r must be a positive integer, got 0"),
    ("finetune_text", ["--strategy", "everything"], r"--strategy must be one of full, lora"),
    ("finetune_text", ["--seeds", "1,one"], r"--seeds must be comma-separated integers"),
    # --- recipes/finetune_image.py -------------------------------------------------------------------------------
    (
        "finetune_image",
        ["--train_dir", "{flat_images}"],
        r"The images of .*flat_images have no labels: --train_dir needs one subfolder per class",
    ),
    ("finetune_image", ["--train_dir", "{one_class}"], r"single class \('cats'\)"),
    (
        "finetune_image",
        ["--train_dir", "{two_classes}", "--validation_dir", "{unseen_classes}"],
        r"classes never seen in training: 'birds'",
    ),
    ("finetune_image", ["--train_dir", "{nan_images}"], r"Cannot read image .*4\.tiff: 1 of its 64 pixels are NaN or infinite"),
    ("finetune_image", ["--model_name_or_path", "{bert}"], r"--model_name_or_path .*bert is a 'bert' model.*image"),
    ("finetune_image", ["--crop_min_scale", "0"], r"--crop_min_scale must be in \(0, 1\]"),
]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("training started: this bad input should have been refused before")

    monkeypatch.setattr(transformers.Trainer, "train", train)


@pytest.mark.parametrize("recipe, flags, message", CASES, ids=[f"{r}-{'-'.join(f).replace('/', '_')[:60]}" for r, f, _ in CASES])
@pytest.mark.slow
def test_bad_input_is_refused_before_training_and_writes_nothing(recipe, flags, message, tmp_path, no_training):
    (tmp_path / "data").mkdir()
    paths = {"tmp": str(tmp_path / "data")}
    for token in re.findall(r"\{([\w.]+)\}", " ".join(flags)):
        if token in MAKE:
            MAKE[token](tmp_path / "data" / token)
            paths[token] = str(tmp_path / "data" / token)
        elif token.startswith("readonly"):
            paths[token] = str(_read_only(tmp_path / "data", existing=token.endswith("existing")))
    argv = [re.sub(r"\{([\w.]+)\}", lambda m: paths[m.group(1)], f) for f in flags]
    config = argv[:1] if argv[0].endswith(".yaml") else []
    argv = config + BASE[recipe] + argv[len(config) :]  # the case's own flags come last, so they win
    out = tmp_path / "data" / "out"
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(out)]
    given = Path(argv[argv.index("--output_dir") + 1])
    existed = given.exists()
    before = _snapshot(tmp_path)
    try:
        with pytest.raises(ValueError, match=message):
            RECIPES[recipe].main(argv)
    finally:
        if (tmp_path / "data" / "ro").exists():
            (tmp_path / "data" / "ro").chmod(0o755)
    assert _snapshot(tmp_path) == before  # the data and any existing output directory are untouched
    assert given.exists() == existed and not out.exists()


def test_the_module_tries_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30 and len({(r, tuple(f)) for r, f, _ in CASES}) == len(CASES)


def _mixed_folder(root: Path) -> dict[str, Path]:
    """Images of many sizes and Pillow modes in two class folders (one file per mode)."""
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))  # a left-to-right gradient
    made = {
        "a/rgb.png": Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
        "a/gray_tall.png": Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)),
        "a/rgba.png": Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)),
        "a/palette.gif": Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P"),
        "a/cmyk.jpg": Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("CMYK"),
        "a/gray_alpha.png": Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).convert("LA"),
        "b/bilevel.bmp": Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).convert("1"),
        "b/deep16.png": Image.fromarray((ramp * 65535).astype(np.uint16)),  # 16-bit: Pillow's convert would clip it to white
        "b/float01.tiff": Image.fromarray(ramp),  # floats in [0, 1]: Pillow's convert would make them black
        "b/wide.png": Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
        "b/gray.png": Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        "b/rgb.png": Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
    }
    for name, image in made.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    return {name: root / name for name in made}


def test_mixed_sizes_and_modes_are_converted_not_refused(tmp_path, capsys):
    """Mixed sizes and modes are legitimate: every image is converted and resized, and a recipe trains on them."""
    from hfssl.data.images import ImageSource, data_channels, decode_images, image_processor

    files = _mixed_folder(tmp_path / "mixed")
    modes = {Image.open(p).mode for p in files.values()}
    assert {"RGB", "L", "RGBA", "P", "CMYK", "LA", "1", "I;16", "F"} <= modes
    paths = list(files.values())
    source = ImageSource(lambda i: Image.open(paths[i]), lambda i: str(paths[i]), np.arange(len(paths)), None)
    assert data_channels(source, skip_corrupt=False) == 3
    processor = image_processor(None, transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3))
    decoded = decode_images(source, processor, 3, skip_corrupt=False)
    assert decoded.shape == (len(paths), 3, 16, 16) and decoded.read().dtype == torch.uint8
    gray = decode_images(source, processor, 1, skip_corrupt=False).read()[:, 0].float()
    for name in ("b/deep16.png", "b/float01.tiff"):  # the same gradient: dark left, bright right, not clipped
        row = gray[paths.index(files[name])].mean(0)
        assert row[0] < 30 and row[-1] > 225 and (row.diff() >= 0).all(), (name, row)

    out = tmp_path / "out"
    metrics = (
        RECIPES["mim"]
        .main(
            [
                "--train_dir",
                str(tmp_path / "mixed"),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--config_overrides",
                "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64,decoder_num_hidden_layers=1,"
                "decoder_hidden_size=32,decoder_num_attention_heads=2,decoder_intermediate_size=64",
                "--eval_steps",
                "2",
                "--save_steps",
                "2",
                "--probe_samples",
                "16",
                "--knn_k",
                "3",
                "--bf16",
                "false",
                "--disable_tqdm",
                "true",
            ]
        )
        .metrics
    )
    record = json.loads((out / "hfssl.json").read_text())
    assert record["num_channels"] == 3 and record["skipped_images"] == 0 and metrics["train_images"] == 2 * 4
    assert transformers.AutoModel.from_pretrained(out).config.num_channels == 3
