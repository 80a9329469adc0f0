from __future__ import annotations

import json

import pandas as pd
import pytest

from hfssl.args import TextDataArguments
from hfssl.data.text import load_text_datasets, resolve_text_column, tokenize_and_pack

DOCS = [f"Document number {i} explains how the parser reads a configuration file and reports errors." for i in range(60)]


def write_source(kind: str, tmp_path) -> str:
    """The same 60 documents as each supported source kind; returns the --train_file value."""
    if kind == "txt_dir":
        d = tmp_path / "txt"
        d.mkdir()
        for i in range(3):
            (d / f"part{i}.txt").write_text("\n".join(DOCS[i * 20 : (i + 1) * 20]) + "\n")
        return str(d)
    if kind == "glob":
        for i in range(2):
            (tmp_path / f"shard{i}.txt").write_text("\n".join(DOCS[i * 30 : (i + 1) * 30]) + "\n")
        return str(tmp_path / "shard*.txt")
    if kind == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(DOCS)))
        return str(p)
    frame = pd.DataFrame({"body": DOCS, "id": range(60)})
    if kind == "csv":
        frame.to_csv(tmp_path / "d.csv", index=False)
        return str(tmp_path / "d.csv")
    frame.to_parquet(tmp_path / "d.parquet")
    return str(tmp_path / "d.parquet")


@pytest.mark.parametrize("kind", ["txt_dir", "glob", "jsonl", "csv", "parquet"])
def test_each_source_kind_loads_all_documents(tmp_path, kind):
    args = TextDataArguments(train_file=write_source(kind, tmp_path), validation_split_percentage=10)
    raw = load_text_datasets(args)
    column = resolve_text_column(raw["train"], None if kind in ("txt_dir", "glob") else "body")
    texts = sorted(list(raw["train"][column]) + list(raw["validation"][column]))
    assert texts == sorted(DOCS)
    assert len(raw["validation"]) == 6


def compress(path, compression: str) -> str:
    """`path` written again as path + compression (.gz, .bz2, .xz, .zst), as corpora ship."""
    import bz2
    import gzip
    import lzma

    import zstandard

    data = open(path, "rb").read()
    packed = {
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".xz": lzma.compress,
        ".zst": zstandard.ZstdCompressor().compress,
    }[compression](data)
    out = f"{path}{compression}"
    open(out, "wb").write(packed)
    return out


@pytest.mark.parametrize("compression", [".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv"])
@pytest.mark.parametrize("streaming", [False, True])
def test_compressed_files_are_read_as_they_are(tmp_path, kind, compression, streaming):
    if kind == "txt":
        plain = tmp_path / "d.txt"
        plain.write_text("\n".join(DOCS) + "\n")
        plain = str(plain)
    else:
        plain = write_source(kind, tmp_path)
    packed = compress(plain, compression)
    args = TextDataArguments(train_file=packed, streaming=streaming, validation_split_percentage=10)
    raw = load_text_datasets(args)
    column = resolve_text_column(raw["train"], None if kind == "txt" else "body")
    seen = [r[column] for r in raw["train"]] + [r[column] for r in raw["validation"]]
    assert sorted(seen) == sorted(DOCS)


def test_a_corrupt_compressed_file_fails_before_any_work_naming_it(tmp_path):
    bad = tmp_path / "corpus.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"--train_file: .*corpus.txt.gz cannot be decompressed as .gz"):
        load_text_datasets(TextDataArguments(train_file=str(bad)))


def test_a_directory_holds_compressed_text_files_too(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(2):
        (folder / f"part{i}.txt").write_text("\n".join(DOCS[i * 30 : (i + 1) * 30]) + "\n")
    compress(folder / "part1.txt", ".gz")
    (folder / "part1.txt").unlink()
    raw = load_text_datasets(TextDataArguments(train_file=str(folder), validation_split_percentage=10))
    assert sorted(list(raw["train"]["text"]) + list(raw["validation"]["text"])) == sorted(DOCS)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt_dir"])
@pytest.mark.slow
def test_streaming_reads_the_same_text(tmp_path, kind, wordpiece):
    args = TextDataArguments(train_file=write_source(kind, tmp_path), streaming=True, validation_split_percentage=10)
    raw = load_text_datasets(args)
    column = resolve_text_column(raw["train"], "body" if kind != "txt_dir" else None)
    seen = [r[column] for r in raw["train"]] + [r[column] for r in raw["validation"]]
    assert sorted(seen) == sorted(DOCS)
    assert len([r for r in raw["validation"]]) == 6
    blocks = tokenize_and_pack(raw, wordpiece, column, max_seq_length=32)
    first = next(iter(blocks["train"]))
    assert len(first["input_ids"]) == 32


@pytest.mark.slow
def test_packing_has_no_padding_and_starts_with_cls(tmp_path, wordpiece):
    raw = load_text_datasets(TextDataArguments(train_file=write_source("jsonl", tmp_path)))
    blocks = tokenize_and_pack(raw, wordpiece, "body", max_seq_length=32)
    for ids in blocks["train"]["input_ids"]:
        assert len(ids) == 32 and ids[0] == wordpiece.cls_token_id
        assert wordpiece.pad_token_id not in ids
    n_tokens = sum(len(wordpiece(t, add_special_tokens=False)["input_ids"]) + 1 for t in list(raw["train"]["body"]))
    assert len(blocks["train"]) * 31 > n_tokens - 31 * 2  # at most a ragged tail is dropped


def test_line_by_line_keeps_one_document_per_example(tmp_path, wordpiece):
    raw = load_text_datasets(TextDataArguments(train_file=write_source("csv", tmp_path)))
    blocks = tokenize_and_pack(raw, wordpiece, "body", max_seq_length=64, line_by_line=True)
    assert len(blocks["train"]) == len(raw["train"])
    assert blocks["train"][0]["input_ids"] == wordpiece(raw["train"][0]["body"])["input_ids"]


def test_tokenization_is_cached(tmp_path, wordpiece):
    raw = load_text_datasets(TextDataArguments(train_file=write_source("jsonl", tmp_path)))
    first = tokenize_and_pack(raw, wordpiece, "body", max_seq_length=32)
    second = tokenize_and_pack(raw, wordpiece, "body", max_seq_length=32)
    assert second["train"].cache_files == first["train"].cache_files  # a second run reuses the cache
    assert first["train"].cache_files


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: str(p / "missing.txt"), "does not exist"),
        (lambda p: (p / "empty.txt").write_text("") and None or str(p / "empty.txt"), "empty"),
        (lambda p: (p / "d").mkdir() or str(p / "d"), "no .txt files"),
        (lambda p: (p / "x.docx").write_text("hi") and None or str(p / "x.docx"), "unsupported file type"),
        (lambda p: str(p / "nothing*.txt"), "matches no files"),
    ],
)
def test_bad_train_file(tmp_path, setup, message):
    with pytest.raises(ValueError, match=message):
        load_text_datasets(TextDataArguments(train_file=setup(tmp_path)))


def test_unknown_text_column_lists_the_columns(tmp_path):
    raw = load_text_datasets(TextDataArguments(train_file=write_source("csv", tmp_path)))
    with pytest.raises(ValueError, match="--text_column 'content'.*body, id"):
        resolve_text_column(raw["train"], "content")


def packed_by_hand(tokenizer, texts: list, max_seq_length: int, batch_size: int = 1000) -> list[dict]:
    """Packing written out plainly, one document and one block at a time: what tokenize_and_pack must give."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    blocks = []
    for start in range(0, len(texts), batch_size):  # each map batch packs on its own; its ragged tail is dropped
        stream = []
        for text in texts[start : start + batch_size]:
            if isinstance(text, str) and text.strip():
                stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
        body = max_seq_length - 1
        for b in range(len(stream) // body):
            ids = [cls] + stream[b * body : (b + 1) * body]
            blocks.append({"input_ids": ids, "special_tokens_mask": [int(t in (cls, sep)) for t in ids]})
    return blocks


@pytest.mark.parametrize("streaming", [False, True])
def test_packing_matches_the_plain_reference(corpus, wordpiece, streaming):
    from datasets import Dataset, DatasetDict, IterableDatasetDict

    # two map batches; blank and missing rows; a document longer than a block; text that spells the special tokens
    texts = corpus[:1150] + ["", "   ", None, " ".join(corpus[:8]), "a literal [SEP] and [CLS] in the text"] + corpus[1150:1300]
    raw = DatasetDict(train=Dataset.from_dict({"text": texts}))
    if streaming:
        raw = IterableDatasetDict(train=raw["train"].to_iterable_dataset())
    blocks = tokenize_and_pack(raw, wordpiece, "text", max_seq_length=32)["train"]
    assert list(blocks) == packed_by_hand(wordpiece, texts, 32)
    if not streaming:
        assert {name: str(f) for name, f in blocks.features.items()} == {
            "input_ids": "List(Value('int32'))",
            "special_tokens_mask": "List(Value('int8'))",
        }


def test_whole_word_numbers_grow_with_the_words_not_the_documents(corpus, wordpiece):
    from datasets import Dataset, DatasetDict

    texts = corpus[:300]  # one map batch of many documents
    raw = DatasetDict(train=Dataset.from_dict({"text": texts}))
    blocks = tokenize_and_pack(raw, wordpiece, "text", max_seq_length=64, whole_word_mask=True)["train"]
    numbers = [start for block in blocks["offset_mapping"] for start, _ in block]
    words = sum(1 + max(w for w in wordpiece(t, add_special_tokens=False).word_ids() if w is not None) for t in texts)
    assert max(numbers) <= words  # numbered one after another (they fit the collator's int64 tensors)
    for block in blocks:  # every token of a word carries its word's number; [CLS] and [SEP] carry 0
        for token, (start, end), special in zip(block["input_ids"], block["offset_mapping"], block["special_tokens_mask"]):
            assert start == end and (start == 0) == bool(special), token
