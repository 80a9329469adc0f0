"""Text corpora: load from the Hub, local files or the embedded default; tokenize (cached); pack.

Loading and caching are `datasets`' own (`load_dataset`, `Dataset.map` fingerprints), so a
second run over the same files and tokenizer skips tokenization. What is written here is the
glue that run_mlm.py keeps inline: resolving user paths, picking the text column, the
validation split, and packing without padding waste.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import json
import logging
import lzma
import os
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from hfssl.args import TextDataArguments
from hfssl.data.samples import DEFAULT_TEXT_NAME, python_docs_corpus

logger = logging.getLogger(__name__)

__all__ = [
    "describe_source",
    "estimate_tokens",
    "in_memory_dataset",
    "is_split_by_process",
    "load_hub_dataset",
    "load_text_datasets",
    "read_error",
    "resolve_text_column",
    "tokenize_and_pack",
]

_STRINGS = ("string", "large_string")
_PART_OF_STREAM = "hfssl_part_of_stream"  # set on a process's part of a training stream (see is_split_by_process)
_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# Compressed text files are read as they are: datasets extracts them (or decompresses them while streaming).
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def _file_type(path: str) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None): corpus.jsonl.gz -> (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def _resolve_files(spec: str, option: str) -> tuple[str, list[str]]:
    """Expand a file, glob or directory into (builder name, sorted files); validate before any work."""
    if os.path.isdir(spec):
        files = sorted(str(p) for p in Path(spec).rglob("*") if p.is_file() and _file_type(str(p))[0] == ".txt")
        if not files:
            raise ValueError(
                f"--{option} {spec} is a directory with no .txt files. Point it at a directory of .txt files or at one file."
            )
    elif any(c in spec for c in "*?["):
        files = sorted(glob.glob(spec, recursive=True))
        if not files:
            raise ValueError(f"--{option} {spec}: the glob matches no files.")
    else:
        if not os.path.isfile(spec):
            raise ValueError(f"--{option} {spec} does not exist. Check the path.")
        files = [spec]
    types = {f: _file_type(f) for f in files}
    unknown = {ext + (comp or "") for ext, comp in types.values() if ext not in _BUILDERS or (comp and ext == ".parquet")}
    if unknown:
        raise ValueError(
            f"--{option}: unsupported file type(s) {', '.join(sorted(unknown))}; use .txt, .json, .jsonl, .csv or .parquet, "
            f"the text ones also compressed ({', '.join(_COMPRESSIONS)})."
        )
    exts = {ext for ext, _ in types.values()}
    builders = {_BUILDERS[e] for e in exts}
    if len(builders) > 1:
        raise ValueError(f"--{option}: mixes file types ({', '.join(sorted(exts))}); give files of one type.")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if len(empty) == len(files):
        raise ValueError(f"--{option}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty. Give a file with text.")
    builder = builders.pop()
    kept = [f for f in files if f not in empty]
    if builder != "parquet":
        for f in kept:
            _check_text_file(f, option, types[f][1])
    return builder, kept


def _open_bytes(path: str, compression: str | None) -> Any:
    """A binary file object of the file's (decompressed) content."""
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        import zstandard

        return zstandard.open(path, "rb")
    return open(path, "rb")


def _check_text_file(path: str, option: str, compression: str | None = None, probe: int = 1 << 16) -> None:
    """A text file must be UTF-8 text: the first 64 KiB (decompressed) are checked here, the rest when `datasets` reads it."""
    try:
        with _open_bytes(path, compression) as f:
            head = f.read(probe)
    except Exception as err:  # each decompressor has its own error type (gzip's OSError, LZMAError, ZstdError, ...)
        raise ValueError(f"--{option}: {path} cannot be decompressed as {compression} ({err}). Check the file.") from None
    if b"\0" in head:
        raise ValueError(
            f"--{option}: {path} looks like a binary file (it holds NUL bytes), not text. "
            "Give .txt/.json/.jsonl/.csv text files (or .parquet)."
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < probe)  # a character may span the cut
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--{option}: {path} is not UTF-8 text (byte {err.start}: {head[err.start : err.start + 1]!r}). "
            f"Convert it first, e.g. `iconv -f latin1 -t utf-8 {path}`."
        ) from None


def read_error(builder: str, files: dict[str, list[str]], err: Exception) -> ValueError:
    """What went wrong reading local data files, in terms of the options that named them."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__ or cause.__context__
    named = ", ".join(f for split in files.values() for f in split)
    if cause is not None:
        return ValueError(f"--train_file/--validation_file: {named} is not UTF-8 text ({cause}). Convert it to UTF-8 first.")
    if "corresponds to no data" in str(err):
        return ValueError(f"--train_file/--validation_file: {named} holds no data rows (a header only?). Give a file with data.")
    return ValueError(f"Could not read --train_file/--validation_file ({named}) as {builder}: {err}")


def load_hub_dataset(name: str, config_name: str | None, **kwargs: Any) -> Any:
    """`datasets.load_dataset(--dataset_name)`, with an error naming the option when it cannot be found or reached."""
    try:
        return datasets.load_dataset(name, config_name, **kwargs)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ValueError(
            f"--dataset_name {name}: cannot load it ({err}). Check the name, the network (HF_HUB_OFFLINE), or give local files."
        ) from None


def in_memory_dataset(args: Any) -> DatasetDict | IterableDatasetDict | None:
    """The dataset handed to the Python API (`hfssl.run(recipe, dataset=...)`) as a dict of splits, else None."""
    ds = getattr(args, "dataset", None)
    if ds is None or isinstance(ds, (DatasetDict, IterableDatasetDict)):
        return ds
    return IterableDatasetDict(train=ds) if isinstance(ds, IterableDataset) else DatasetDict(train=ds)


def in_memory_name(args: Any) -> str:
    """How records and cards name an in-memory dataset: its Hub name when `load_dataset` made it."""
    ds = args.dataset
    first = ds[next(iter(ds))] if isinstance(ds, (DatasetDict, IterableDatasetDict)) else ds
    info = getattr(first, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    return name if name and name not in ("generator", "parquet", "json", "csv", "text", "arrow") else "in-memory dataset"


def _default_corpus_file(max_documents: int | None) -> str:
    """Write the embedded corpus once as JSON lines so `datasets` can cache its tokenization."""
    cache = Path(os.environ.get("HFSSL_CACHE", Path.home() / ".cache" / "hfssl"))
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-{max_documents or 'all'}"
    path = cache / f"{DEFAULT_TEXT_NAME}-{tag}.jsonl"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in python_docs_corpus(max_documents):
                f.write(json.dumps({"text": doc}) + "\n")
        try:  # a link never replaces the copy another process made first: every process reads one file, one cache
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return str(path)


def describe_source(args: TextDataArguments) -> str:
    """A short human name for the training data, used in hfssl.json and the model card."""
    if args.dataset is not None:
        return in_memory_name(args)
    if args.dataset_name:
        return args.dataset_name + (f"/{args.dataset_config_name}" if args.dataset_config_name else "")
    if args.train_file:
        return args.train_file
    return DEFAULT_TEXT_NAME


def load_text_datasets(args: TextDataArguments, seed: int = 42) -> DatasetDict | IterableDatasetDict:
    """Return {'train', 'validation'} raw text datasets from the option that names the source."""
    if args.dataset is not None:
        raw = in_memory_dataset(args)
        if args.streaming and not isinstance(raw, IterableDatasetDict):
            raw = IterableDatasetDict({split: ds.to_iterable_dataset() for split, ds in raw.items()})
    elif args.dataset_name:
        raw = load_hub_dataset(args.dataset_name, args.dataset_config_name, streaming=args.streaming)
    else:
        data_files: dict[str, list[str]] = {}
        if args.train_file:
            builder, data_files["train"] = _resolve_files(args.train_file, "train_file")
        else:
            builder, data_files["train"] = "json", [_default_corpus_file(args.max_corpus_documents)]
        if args.validation_file:
            val_builder, data_files["validation"] = _resolve_files(args.validation_file, "validation_file")
            if val_builder != builder:
                raise ValueError(f"--validation_file must have the same type as --train_file ({builder}), got {val_builder}.")
        try:
            raw = datasets.load_dataset(builder, data_files=data_files, streaming=args.streaming)
        except (datasets.exceptions.DatasetGenerationError, UnicodeDecodeError, ValueError) as err:
            raise read_error(builder, data_files, err) from None
    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (found: {', '.join(raw)}).")
    if "validation" not in raw:
        if args.validation_split_percentage == 0:
            raise ValueError("No validation data: give --validation_file or a --validation_split_percentage above 0.")
        if not args.streaming and len(raw["train"]) < 2:
            raise ValueError(
                f"The training data ({describe_source(args)}) has {len(raw['train'])} row(s): too few to hold "
                "out a validation split. Give more text, or a --validation_file."
            )
        if args.streaming:
            raw = _split_stream(raw["train"], args.validation_split_percentage)
        else:
            split = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=seed)
            raw = DatasetDict(train=split["train"], validation=split["test"])
    if args.max_train_samples is not None:
        raw["train"] = _take(raw["train"], args.max_train_samples)
    if args.max_eval_samples is not None:
        raw["validation"] = _take(raw["validation"], args.max_eval_samples)
    return raw


def _take(ds: Dataset | IterableDataset, n: int) -> Dataset | IterableDataset:
    return ds.take(n) if isinstance(ds, IterableDataset) else ds.select(range(min(n, len(ds))))


def _split_stream(stream: IterableDataset, percentage: int) -> IterableDatasetDict:
    """Hold out every k-th example of a stream, deterministically, without reading it all."""
    k = max(2, round(100 / percentage))
    with_index = stream.map(lambda _, i: {"__index": i}, with_indices=True)
    return IterableDatasetDict(
        train=with_index.filter(lambda ex: ex["__index"] % k != 0).remove_columns("__index"),
        validation=with_index.filter(lambda ex: ex["__index"] % k == 0).remove_columns("__index"),
    )


def _column_names(ds: Dataset | IterableDataset) -> list[str]:
    names = ds.column_names
    if names is None:  # a stream whose features are unknown until read
        names = list(next(iter(ds)).keys())
    return names


def resolve_text_column(ds: Dataset | IterableDataset, text_column: str | None) -> str:
    """The column to read text from: the one asked for, 'text', or the only string column."""
    names = _column_names(ds)
    features = ds.features or {}
    if text_column is not None:
        if text_column not in names:
            raise ValueError(f"--text_column {text_column!r} is not in the data; its columns are: {', '.join(names)}.")
        column = text_column
    elif "text" in names:
        column = "text"
    else:
        strings = [n for n in names if getattr(features.get(n), "dtype", None) in _STRINGS]
        if len(strings) != 1:
            raise ValueError(f"Cannot tell which column holds the text ({', '.join(names)}); pass --text_column.")
        column = strings[0]
    kind = features.get(column)
    if kind is not None and getattr(kind, "dtype", None) not in _STRINGS:
        raise ValueError(
            f"--text_column {column!r} holds {getattr(kind, 'dtype', type(kind).__name__)} values, not text. "
            f"Pass --text_column naming a text column (columns: {', '.join(names)})."
        )
    return column


def estimate_tokens(ds: Dataset | IterableDataset, tokenizer: Any, text_column: str, sample: int = 1000) -> int | None:
    """The corpus's size in tokens, from the tokens of a seeded sample of `sample` rows (None for a stream, whose
    size is unknown): enough to size a model, without tokenizing everything twice."""
    if not isinstance(ds, Dataset) or len(ds) == 0:
        return None
    rows = ds.shuffle(seed=0).select(range(min(sample, len(ds))))[text_column]
    counts = tokenizer([t or "" for t in rows], add_special_tokens=False)["input_ids"]
    return round(sum(map(len, counts)) / len(rows) * len(ds))


def tokenize_and_pack(
    raw: DatasetDict | IterableDatasetDict,
    tokenizer: Any,
    text_column: str,
    max_seq_length: int,
    line_by_line: bool = False,
    whole_word_mask: bool = False,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DatasetDict | IterableDatasetDict:
    """Tokenize every split and cut it into examples of `max_seq_length` tokens.

    Packing (the default) concatenates documents, each closed by [SEP], and cuts full blocks
    that start with [CLS]: no padding, so every position trains. With `whole_word_mask`, each
    token also carries `offset_mapping` = (word, word) spans built from the tokenizer's own
    `word_ids()` (its pre-tokenizer's word boundaries), which DataCollatorForLanguageModeling
    reads to mask all pieces of a word together. Raw character offsets would merge words for
    SentencePiece/byte-level tokenizers, whose pieces carry their leading space.

    Under `world_size` processes, process `rank` tokenizes only its share: of each split's rows (see
    `_map_by_process`), or of the training stream (`_own_stream`).
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:  # e.g. RoBERTa-style: <s> ... </s>
        cls_id, sep_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    streaming = isinstance(raw, IterableDatasetDict)
    columns = _column_names(raw["train"])

    def words_as_offsets(enc: Any, i: int, start: int) -> list[tuple[int, int]]:
        """(w, w) per token, w a running word number from `start` >= 1; specials get (0, 0)."""
        return [(start + w, start + w) if w is not None else (0, 0) for w in enc.word_ids(i)]

    def tokenize_lines(batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[text_column] if isinstance(t, str) and t.strip()]
        enc = tokenizer(texts, truncation=True, max_length=max_seq_length, return_special_tokens_mask=True)
        if whole_word_mask:
            enc["offset_mapping"] = [words_as_offsets(enc, i, 1) for i in range(len(texts))]
        return dict(enc)

    def tokenize_and_group(batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[text_column] if isinstance(t, str) and t.strip()]
        # Token ids only: packed blocks need no attention mask or token types (long documents are cut into blocks below).
        enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False)
        stream: list[int] = []
        for ids in enc["input_ids"]:
            stream += ids
            stream.append(sep_id)
        body = max_seq_length - 1  # room for the leading [CLS]
        n_blocks = len(stream) // body  # the ragged tail of each map batch is dropped, as in run_mlm.py
        blocks = np.empty((n_blocks, max_seq_length), dtype=np.int64)
        blocks[:, 0] = cls_id
        blocks[:, 1:] = np.asarray(stream[: n_blocks * body], dtype=np.int64).reshape(n_blocks, body)
        special = (blocks == cls_id) | (blocks == sep_id)  # one array operation for every block of the batch
        out: dict[str, list] = {"input_ids": blocks.tolist(), "special_tokens_mask": special.astype(np.int64).tolist()}
        if whole_word_mask:
            words: list[tuple[int, int]] = []
            word_base = 1
            for i in range(len(texts)):
                offsets = words_as_offsets(enc, i, word_base)
                words.extend(offsets + [(0, 0)])
                word_base = max(word_base, 1 + max((o[0] for o in offsets), default=0))  # the next document's words come after
            out["offset_mapping"] = [[(0, 0)] + words[b * body : (b + 1) * body] for b in range(n_blocks)]
        return out

    fn = tokenize_lines if line_by_line else tokenize_and_group
    kwargs: dict[str, Any] = dict(batched=True, remove_columns=columns)
    if streaming:
        streams = type(raw)({split: ds.map(fn, **kwargs) for split, ds in _own_stream(raw, rank, world_size).items()})
        setattr(streams["train"], _PART_OF_STREAM, world_size > 1)
        return streams
    kwargs.update(
        num_proc=num_proc,
        load_from_cache_file=not overwrite_cache,
        batch_size=1000,
        desc="Tokenizing" + ("" if line_by_line else f" and packing into {max_seq_length}-token blocks"),
    )
    examples = type(raw)({split: _map_by_process(ds, fn, kwargs, split, rank, world_size) for split, ds in raw.items()})
    for split, ds in examples.items():
        if len(ds) == 0:
            unit = "non-empty line" if line_by_line else f"full block of --max_seq_length {max_seq_length} tokens"
            raise ValueError(
                f"The {split} text gives no example: not one {unit}. Give more text "
                f"({len(raw[split])} rows now){'' if line_by_line else ' or a smaller --max_seq_length'}."
            )
    return examples


def _map_by_process(ds: Dataset, fn: Any, kwargs: dict[str, Any], split: str, rank: int, world_size: int) -> Dataset:
    """`ds.map(fn, **kwargs)`, with the work split between `world_size` processes and the cache built once.

    Process `rank` maps its contiguous 1/W of the rows, which `datasets` caches by fingerprint; after a barrier, every
    process maps the W shards in order (the other processes' maps are cache hits, read memory-mapped) and concatenates
    them. The examples are those of one process's map except at the W - 1 shard edges: a map batch (1,000 rows)
    starts at each shard's first row, and each batch packs on its own, dropping its ragged tail.
    """
    if world_size == 1:
        return ds.map(fn, **kwargs)
    if not ds.cache_files:  # in memory: a map's result stays in the process that made it
        logger.info("The %s data is in memory, with no cache to share: each process tokenizes all %d rows", split, len(ds))
        return ds.map(fn, **kwargs)
    from accelerate import PartialState

    folder = os.path.dirname(ds.cache_files[0]["filename"])  # where datasets writes the maps' cache files
    shards = [ds.shard(world_size, k, contiguous=True) for k in range(world_size)]
    tokenized_here = 0

    def mapped(k: int, load_from_cache_file: bool) -> Dataset:
        nonlocal tokenized_here
        present = set(os.listdir(folder))
        out = shards[k].map(fn, **{**kwargs, "load_from_cache_file": load_from_cache_file})
        if not {os.path.basename(f["filename"]) for f in out.cache_files} <= present:  # not read from the cache
            tokenized_here += len(shards[k])
            if k != rank:
                logger.warning("Rank %d tokenized shard %d of the %s data itself: its cache was not found", rank, k, split)
        return out

    own = mapped(rank, kwargs["load_from_cache_file"])
    PartialState().wait_for_everyone()  # every shard is in the cache
    parts = [own if k == rank else mapped(k, True) for k in range(world_size)]
    logger.info(
        "%s: rank %d of %d tokenized %s of %s rows; the rest came from the cache",
        split,
        rank,
        world_size,
        f"{tokenized_here:,}",
        f"{len(ds):,}",
    )
    return datasets.concatenate_datasets(parts)


def _own_stream(raw: IterableDatasetDict, rank: int, world_size: int) -> IterableDatasetDict:
    """Process `rank`'s part of the training stream, every W-th row, cut before the tokenizing map so that each process
    reads every row but tokenizes only its own. (`split_dataset_by_node` cuts at iteration time, around the whole
    pipeline: by rows, after the tokenizing map; by files, beneath the held-out split and `--max_train_samples`, which
    count rows.) The held-out stream stays whole: the main process reads it and hands evaluation batches to the others."""
    if world_size == 1:
        return raw
    first = ", ".join(str(rank + k * world_size) for k in range(3))
    logger.info("Rank %d of %d tokenizes rows %s, ... of the training stream", rank, world_size, first)
    train = raw["train"].filter(lambda _, i: i % world_size == rank, with_indices=True)
    return IterableDatasetDict({**raw, "train": train})


def is_split_by_process(ds: Any) -> bool:
    """Whether `ds` is one process's part of a training stream (tokenize_and_pack with world_size > 1): the Trainer
    must read it as it is, in its own process."""
    return getattr(ds, _PART_OF_STREAM, False)
