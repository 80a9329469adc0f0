"""Two processes (gloo, on CPU) against one, for every recipe.

The two processes are started as users start them: `accelerate launch --config_file
recipes/configs/accelerate/cpu_2proc.yaml` (`accelerate launch --cpu --num_processes 2` starts ONE process).
Each 2-process run uses half the per-device batch of the 1-process run: the same global batch, hence the
same samples in each step (accelerate hands process p batch 2k + p of the same seeded order). It must
write a loadable model whose eval metric matches the 1-process run within a measured tolerance:

- finetune_text / finetune_image (no dropout, no augmentation): measured bit-identical eval loss and
  accuracy; tolerance 1e-4 relative, for other BLAS builds and thread counts.
- mim.py: the random patch masks are drawn per process, so each image gets other masks in training and
  evaluation; measured relative differences of eval_loss 0.09 %, 0.29 %, 1.1 % (seeds 2, 1, 3); tolerance 3 %.

- mlm.py: masks are drawn per process in training and evaluation (each process has its own masking
  generator and evaluates its own half of the held-out blocks); tolerance 3 % of eval_mlm_loss. Its
  per-token eval outputs are gathered as (1, N, 2) rows padded with -100, since processes hold different N.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, load_recipe

CPU_2PROC = ROOT / "recipes" / "configs" / "accelerate" / "cpu_2proc.yaml"
FSDP = ROOT / "recipes" / "configs" / "accelerate" / "fsdp.yaml"
FSDP_ON_CPU = ROOT / "tests" / "fsdp_on_cpu.py"

ENCODER = "num_hidden_layers=2,hidden_size=64,num_attention_heads=2,intermediate_size=128"
DECODER = ",decoder_num_hidden_layers=1,decoder_hidden_size=64,decoder_num_attention_heads=2,decoder_intermediate_size=128"
COMMON = ["--bf16", "false", "--disable_tqdm", "true", "--seed", "1", "--report_to", "none"]


# What torch's DDP warns at the first step when built with find_unused_parameters=True (the Trainer's default) and every
# parameter was used: the search costs an extra pass over the autograd graph at every step.
UNUSED_SEARCH = "find_unused_parameters=True was specified"


def two_processes(recipe: str, args: list[str], fsdp: bool = False) -> subprocess.CompletedProcess:
    """The recipe under `accelerate launch --config_file recipes/configs/accelerate/cpu_2proc.yaml`: 2 CPU processes, gloo.

    fsdp: under the shipped `fsdp.yaml` instead (FSDP2, sharded checkpoints) with `--num_processes 2 --mixed_precision
    no`, through tests/fsdp_on_cpu.py, which lets accelerate run FSDP on CPU processes."""
    with socket.socket() as s:  # a free port, so that concurrent launches on one machine do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = (
        ["--config_file", str(FSDP), "--num_processes", "2", "--mixed_precision", "no"]
        if fsdp
        else ["--config_file", str(CPU_2PROC)]
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch,
        "--main_process_port",
        str(port),
        *([str(FSDP_ON_CPU)] if fsdp else []),
        str(ROOT / "recipes" / f"{recipe}.py"),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Saved to") == 1  # one summary, from the main process
    return proc


def tiny_text_model(path: Path, tokenizer) -> str:
    """A 2-layer BERT with random weights and no dropout, saved as a pretrained checkpoint."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_vision_model(path: Path) -> str:
    """A 2-layer ViT for 16-pixel RGB images with random weights, saved with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    ViTModel(
        ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128, image_size=16, patch_size=4),
        add_pooling_layer=False,
    ).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return str(path)


def case(recipe: str, tmp: Path, wordpiece) -> tuple[list[str], int, str, float]:
    """(arguments, per-device train batch of the 1-process run, the metric compared, its relative tolerance)."""
    if recipe == "mlm":  # masks are drawn per process (train and eval): the eval loss differs by masking noise
        return (
            [
                "--max_corpus_documents",
                "1500",
                "--vocab_size",
                "1500",
                "--max_seq_length",
                "64",
                "--config_overrides",
                "num_hidden_layers=1,hidden_size=64,num_attention_heads=2,intermediate_size=128",
                "--max_steps",
                "16",
                "--save_steps",
                "100",
                "--eval_steps",
                "100",
                "--per_device_eval_batch_size",
                "32",
            ],
            32,
            "eval_mlm_loss",
            0.03,
        )
    if recipe == "mim":  # masks differ per process: measured relative differences 0.09 %, 0.29 %, 1.1 % (seeds 2, 1, 3)
        return (
            [
                "--config_overrides",
                ENCODER + DECODER,
                "--max_train_samples",
                "512",
                "--max_eval_samples",
                "256",
                "--max_steps",
                "16",
                "--learning_rate",
                "2e-3",
                "--save_steps",
                "100",
                "--eval_steps",
                "100",
                "--probe_samples",
                "32",
                "--knn_k",
                "5",
                "--per_device_eval_batch_size",
                "64",
            ],
            64,
            "eval_loss",
            0.03,
        )
    # the classifiers: same samples, same gradients, no dropout or augmentation: measured bit-identical eval loss
    if recipe == "finetune_text":
        return (
            [
                "--model_name_or_path",
                tiny_text_model(tmp / "bert", wordpiece),
                "--train_samples_per_class",
                "16",
                "--max_eval_samples",
                "128",
                "--max_seq_length",
                "32",
                "--max_steps",
                "8",
                "--learning_rate",
                "1e-3",
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--per_device_eval_batch_size",
                "32",
            ],
            16,
            "eval_loss",
            1e-4,
        )
    return (
        [
            "--model_name_or_path",
            tiny_vision_model(tmp / "vit"),
            "--crop_min_scale",
            "1",
            "--max_train_samples",
            "256",
            "--max_eval_samples",
            "128",
            "--max_steps",
            "8",
            "--learning_rate",
            "2e-3",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--per_device_eval_batch_size",
            "64",
        ],
        32,
        "eval_loss",
        1e-4,
    )


def metrics_of(out: Path) -> dict:
    return json.loads((out / "hfssl.json").read_text())["metrics"]


def assert_each_process_tokenized_half(log: str) -> None:
    """Each of the 2 processes tokenized its half of each split, and read the other half from the cache."""
    told = re.findall(r"(\w+): rank (\d) of 2 tokenized ([\d,]+) of ([\d,]+) rows", log)
    counts = {(split, int(rank)): (int(n.replace(",", "")), int(m.replace(",", ""))) for split, rank, n, m in told}
    assert set(counts) == {(split, rank) for split in ("train", "validation") for rank in (0, 1)}, log[-3000:]
    for split in ("train", "validation"):
        (n0, total), (n1, _) = counts[(split, 0)], counts[(split, 1)]
        assert n0 + n1 == total and abs(n0 - n1) <= 1, counts  # each row tokenized once, by one of the two processes


@pytest.mark.parametrize("recipe", ["mlm", "mim", "finetune_text", "finetune_image"])
@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(recipe, tmp_path, wordpiece, monkeypatch):
    from transformers import AutoConfig, AutoModel

    args, batch, metric, tolerance = case(recipe, tmp_path, wordpiece)
    one, two = tmp_path / "one", tmp_path / "two"
    images = recipe in ("mim", "finetune_image")
    caches = {run: ["--image_cache_dir", str(tmp_path / f"{run}-cache")] if images else [] for run in ("one", "two")}
    load_recipe(recipe).main(
        args + COMMON + caches["one"] + ["--per_device_train_batch_size", str(batch), "--output_dir", str(one)]
    )
    if recipe == "mlm":  # a datasets cache of its own, so that each process's count of rows it tokenized is its work here
        monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
        args = args + ["--log_level_replica", "info"]  # the other process's log too
    proc = two_processes(
        recipe, args + COMMON + caches["two"] + ["--per_device_train_batch_size", str(batch // 2), "--output_dir", str(two)]
    )
    if recipe in ("mlm", "mim"):  # every parameter is used: DDP is built without the search for unused ones
        assert UNUSED_SEARCH not in proc.stderr
    if recipe == "mlm":
        assert_each_process_tokenized_half(proc.stdout)
    if images:  # each process decoded its half of each split into the one cache the two share
        built = sorted((tmp_path / "two-cache").iterdir())
        assert len(built) == 2 and not any(p.name.endswith(".partial") for p in built)  # train and held-out
        for split in built:
            shards = [json.loads((split / f"shard.{r}.json").read_text()) for r in (0, 1)]
            total = json.loads((split / "meta.json").read_text())["images"]
            assert [s["decoded"] for s in shards] == [total - total // 2, total // 2]
            assert shards[1]["first"] == shards[0]["decoded"]
        cached = {p.name: (p / "pixels.u8").read_bytes() for p in (tmp_path / "one-cache").iterdir()}
        assert {p.name: (p / "pixels.u8").read_bytes() for p in built} == cached  # the same bytes as one process decoded

    single, double = metrics_of(one), metrics_of(two)
    print(
        f"SCALE-OUT {recipe}: {metric} 1 process {single[metric]:.6f}, 2 processes {double[metric]:.6f}, "
        f"difference {abs(single[metric] - double[metric]):.2e}"
    )
    assert abs(single[metric] - double[metric]) <= tolerance * abs(single[metric])  # relative
    assert double["epoch"] == pytest.approx(single["epoch"])  # the data was split between 2 processes, not read twice
    if "eval_samples" in single:  # the classifiers: every held-out example scored once, none twice, the same way
        assert single["eval_samples"] == double["eval_samples"]
        assert single["eval_accuracy"] == double["eval_accuracy"]
    assert AutoConfig.from_pretrained(two).model_type == AutoConfig.from_pretrained(one).model_type
    model = AutoModel.from_pretrained(two)  # loadable
    assert sum(p.numel() for p in model.parameters()) > 0


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


def sharded_checkpoint(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model weights of an FSDP checkpoint (one shard file per process, torch.distributed.checkpoint), joined."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    joined = checkpoint / "joined.pt"
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", joined)
    return torch.load(joined, weights_only=True)["model"]


@pytest.mark.parametrize("recipe", ["mlm", "mim"])
@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process_and_saves_the_trained_weights(recipe, tmp_path, wordpiece):
    """The shipped fsdp.yaml (FSDP2, sharded checkpoints) on 2 CPU processes against 1 process, same global batch.

    Its eval metric is held to the scale-out tolerance of the DDP test. Its saved model is the whole trained model:
    the weights of its last (sharded) checkpoint, which holds the same step, gathered exactly. (Weights are not
    compared with the 1-process run's: each process draws its own masks, so they differ by that noise, measured
    max |difference| 3e-2 for DDP and FSDP alike; FSDP's and DDP's saved models, from the same masks, measured
    2e-7 apart for mlm.py and identical for mim.py.)"""
    from transformers import AutoModel, AutoModelForMaskedLM

    from hfssl.models import vit_to_beit

    args, batch, metric, tolerance = case(recipe, tmp_path, wordpiece)
    one, two = tmp_path / "one", tmp_path / "fsdp"
    caches = {
        out: ["--image_cache_dir", str(out.with_name(out.name + "-cache"))] if recipe == "mim" else [] for out in (one, two)
    }
    load_recipe(recipe).main(
        args + COMMON + caches[one] + ["--per_device_train_batch_size", str(batch), "--output_dir", str(one)]
    )
    two_processes(
        recipe,
        args + COMMON + caches[two] + ["--per_device_train_batch_size", str(batch // 2), "--output_dir", str(two)],
        fsdp=True,
    )

    single, sharded = metrics_of(one), metrics_of(two)
    print(f"FSDP {recipe}: {metric} 1 process {single[metric]:.6f}, 2 processes FSDP {sharded[metric]:.6f}")
    assert abs(single[metric] - sharded[metric]) <= tolerance * abs(single[metric])  # relative, as DDP's
    assert sharded["epoch"] == pytest.approx(single["epoch"])  # the data was split between 2 processes, not read twice

    assert saved_weights(two).keys() == saved_weights(one).keys()  # every tensor, as one process saves it (tied ones once)
    loader = AutoModelForMaskedLM if recipe == "mlm" else AutoModel  # mim saves the encoder (a BeitModel)
    model, info = loader.from_pretrained(two, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    trained = sharded_checkpoint(two / "checkpoint-16")  # the last step's weights, each process's shard
    if recipe == "mim":  # the checkpoint holds MAE's encoder and decoder; the output, the encoder as a BeitModel
        trained = vit_to_beit({k.removeprefix("vit."): v for k, v in trained.items() if k.startswith("vit.")}, mean_pooling=True)
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    for name, weights in loaded.items():
        expected = trained[name]
        if expected.shape != weights.shape:  # a grayscale encoder's first convolution, spread over RGB (rgb_input)
            expected = expected.repeat(1, 3, 1, 1) / 3
        assert torch.equal(weights, expected), name
    if recipe == "mlm":  # the decoder is the word embeddings, as trained
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:  # the probes and the reconstruction picture ran on the gathered model
        assert "eval_knn_accuracy" in sharded and (two / "reconstructions.png").is_file()
    assert (two / "README.md").is_file()


@pytest.mark.slow
def test_clip_trains_on_two_processes_without_searching_for_unused_parameters(tmp_path):
    from transformers import VisionTextDualEncoderModel

    out = tmp_path / "two"
    proc = two_processes("clip", COMMON + ["--max_steps", "6", "--eval_steps", "3", "--output_dir", str(out)])
    assert UNUSED_SEARCH not in proc.stderr
    assert metrics_of(out)["train_steps"] == 6
    VisionTextDualEncoderModel.from_pretrained(out)  # loadable


# ---------------------------------------------------------------------------------- tokenizing under W processes


class CountingTokenizer:
    """The tokenizer, counting the texts it was asked to tokenize."""

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN204
        self.texts += list(texts)
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.tokenizer, name)


def test_each_of_two_processes_tokenizes_its_half_and_reads_the_other_from_the_cache(tmp_path, monkeypatch, caplog, wordpiece):
    import copy
    import threading

    from accelerate import PartialState
    from datasets import load_dataset

    from hfssl.data.text import tokenize_and_pack

    docs = [f"Document {i} says how the parser reads option number {i % 7} and what it reports." for i in range(2000)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    raw = load_dataset("json", data_files={"train": str(tmp_path / "docs.jsonl")}, cache_dir=str(tmp_path / "cache"))
    barrier = threading.Barrier(2)  # two threads play the two processes
    monkeypatch.setattr(PartialState, "wait_for_everyone", lambda self: barrier.wait(timeout=60))
    caplog.set_level("INFO", logger="hfssl")
    results = {}

    def rank(r: int) -> None:
        results[r] = tokenize_and_pack(raw, copy.deepcopy(wordpiece), "text", 32, rank=r, world_size=2)["train"]

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    told = sorted(rec.getMessage() for rec in caplog.records if "tokenized" in rec.getMessage())
    assert told == [f"train: rank {r} of 2 tokenized 1,000 of 2,000 rows; the rest came from the cache" for r in (0, 1)]
    # shards of 1,000 rows start where one process's map batches start: the same examples as one process's map
    alone = tokenize_and_pack(raw, wordpiece, "text", 32, overwrite_cache=True)["train"]
    assert results[0]["input_ids"] == results[1]["input_ids"] == alone["input_ids"]


def test_each_process_tokenizes_every_other_row_of_a_stream_and_reads_it_itself(tmp_path, wordpiece, corpus, monkeypatch):
    from datasets import Dataset, IterableDatasetDict
    from transformers import BertConfig, BertForMaskedLM, TrainingArguments

    from hfssl.args import MaskingArguments
    from hfssl.data.text import is_split_by_process, tokenize_and_pack
    from hfssl.pretext.masked_tokens import MaskedLMTrainer, build_masker

    texts = corpus[:400]
    stream = Dataset.from_dict({"text": texts}).to_iterable_dataset()
    seen, parts = {}, {}
    for r in (0, 1):
        counting = CountingTokenizer(wordpiece)
        parts[r] = tokenize_and_pack(
            IterableDatasetDict(train=stream, validation=stream), counting, "text", 32, rank=r, world_size=2
        )
        blocks = list(parts[r]["train"])
        seen[r] = counting.texts
        assert is_split_by_process(parts[r]["train"]) and not is_split_by_process(parts[r]["validation"])
    assert seen[0] == texts[0::2] and seen[1] == texts[1::2]  # each row tokenized once, by one process
    assert len(list(parts[0]["validation"])) > len(blocks)  # the held-out stream stays whole

    # The Trainer reads process 1's part as it is, even where accelerate counts 2 processes (it would otherwise
    # iterate the stream on the main process only and hand out its batches).
    model = BertForMaskedLM(
        BertConfig(vocab_size=len(wordpiece), num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    )
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, report_to="none")
    trainer = MaskedLMTrainer(
        model=model, args=args, train_dataset=parts[1]["train"], masker=build_masker(wordpiece, MaskingArguments())
    )
    monkeypatch.setattr(trainer.accelerator.state, "num_processes", 2)
    batches = list(trainer.get_train_dataloader())
    assert torch.cat([b["input_ids"] for b in batches]).tolist() == [b["input_ids"] for b in blocks]


@pytest.mark.slow
def test_mim_streams_a_hub_image_dataset_on_two_processes(tmp_path):
    """Each process reads its own parquet shard of the stream (accelerate shards a datasets.IterableDataset with as
    many shards as processes) and decodes only its batches; the held-out images are cached once, by both."""
    from test_recipe_mim import DECODER, ENCODER, digits_parquet_dataset
    from transformers import AutoModel

    data = digits_parquet_dataset(tmp_path / "digits")
    out, cache = tmp_path / "two", tmp_path / "cache"
    args = ["--dataset_name", str(data), "--streaming", "true", "--image_cache_dir", str(cache), "--probe_samples", "64"]
    args += ["--config_overrides", ENCODER + DECODER, "--max_steps", "4", "--eval_steps", "2", "--output_dir", str(out)]
    proc = two_processes("mim", COMMON + args + ["--per_device_train_batch_size", "16"])
    assert UNUSED_SEARCH not in proc.stderr
    metrics = metrics_of(out)
    assert metrics["train_steps"] == 4 and metrics["train_images"] == 4 * 16 * 2
    shards = [json.loads(p.read_text()) for p in sorted(cache.glob("*/shard.*.json"))]
    assert sorted(s["decoded"] for s in shards) == [30, 30, 32, 32]  # 60 held-out and 64 probe images, half each
    AutoModel.from_pretrained(out)
