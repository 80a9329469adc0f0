from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from hfssl.tokenizer import check_mask_token, resolve_tokenizer, tokenizer_cache_key, train_tokenizer


@pytest.mark.parametrize("kind, mask", [("wordpiece", "[MASK]"), ("bpe", "<mask>")])
def test_trained_tokenizer_round_trips(tmp_path, corpus, kind, mask):
    tok = train_tokenizer(corpus[:2000], vocab_size=1000, kind=kind)
    assert tok.mask_token == mask and len(tok) == 1000
    enc = tok("Return the number of items in a container.")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("Return the number of items.")["input_ids"] == tok("Return the number of items.")["input_ids"]
    assert again.mask_token == mask


def test_empty_corpus_fails():
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", "   "], vocab_size=100)


def test_tokenizer_without_mask_token_is_rejected(wordpiece):
    from transformers import PreTrainedTokenizerFast

    no_mask = PreTrainedTokenizerFast(tokenizer_object=wordpiece.backend_tokenizer, unk_token="[UNK]")
    with pytest.raises(ValueError, match="no mask token"):
        check_mask_token(no_mask, "--tokenizer_name gpt2")


def _train_options(**changes):
    """The model options resolve_tokenizer reads when mlm.py runs with --train_tokenizer true."""
    from types import SimpleNamespace

    return SimpleNamespace(
        **{
            "tokenizer_name": None,
            "train_tokenizer": True,
            "model_name_or_path": None,
            "trust_remote_code": False,
            "tokenizer_type": "wordpiece",
            "vocab_size": 600,
            "tokenizer_training_samples": 10_000,
            **changes,
        }
    )


def test_a_rerun_reuses_the_tokenizer_trained_on_the_same_corpus(tmp_path, monkeypatch, corpus, caplog):
    # tokenizers' WordPiece trainer breaks ties in hash-map order (tokenizers issue 1794): a second training can
    # give another vocabulary, so the same command must reuse the first one instead of training again.
    import logging

    import datasets

    from hfssl import tokenizer as tokenizer_module

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    trainings = []
    real_train = tokenizer_module.train_tokenizer
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", lambda *a, **k: trainings.append(a) or real_train(*a, **k))
    first = resolve_tokenizer(_train_options(), datasets.Dataset.from_dict({"text": corpus[:1500]}), "text")
    with caplog.at_level(logging.INFO, logger="hfssl.tokenizer"):
        again = resolve_tokenizer(_train_options(), datasets.Dataset.from_dict({"text": corpus[:1500]}), "text")
    assert len(trainings) == 1 and "Reusing the tokenizer trained on this corpus (cache key" in caplog.text
    assert again.get_vocab() == first.get_vocab() and len(again) == 600
    assert again.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()
    assert (again.mask_token, again.model_max_length) == ("[MASK]", 512)
    assert [p.name for p in (tmp_path / "hfssl-tokenizers").iterdir()] == [
        tokenizer_cache_key(corpus[:1500], "wordpiece", 600, 10_000)
    ]  # one entry, no staging directory left behind

    resolve_tokenizer(_train_options(vocab_size=700), datasets.Dataset.from_dict({"text": corpus[:1500]}), "text")
    resolve_tokenizer(_train_options(), datasets.Dataset.from_dict({"text": corpus[1:1501]}), "text")
    assert len(trainings) == 3  # other options or another corpus: another tokenizer


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "bpe"},
        {"vocab_size": 601},
        {"training_samples": 99},
        {"texts": ["Return the sum.", "Open a file"]},  # another corpus
        {"texts": ["Open a file.", "Return the sum."]},  # the same texts in another order
        {"texts": ["Return the sum.Open a file."]},  # the same characters, split otherwise
    ],
)
def test_the_tokenizer_cache_key_follows_the_corpus_and_every_option(change):
    base = {"texts": ["Return the sum.", "Open a file."], "kind": "wordpiece", "vocab_size": 600, "training_samples": 100}
    assert tokenizer_cache_key(**base) == tokenizer_cache_key(**{**base, "texts": iter(["Return the sum.", "", "Open a file."])})
    assert tokenizer_cache_key(**{**base, **change}) != tokenizer_cache_key(**base)


def test_the_tokenizer_cache_key_follows_the_tokenizers_version(monkeypatch):
    import tokenizers

    before = tokenizer_cache_key(["Return the sum."], "wordpiece", 600, 100)
    monkeypatch.setattr(tokenizers, "__version__", tokenizers.__version__ + ".post1")
    assert tokenizer_cache_key(["Return the sum."], "wordpiece", 600, 100) != before


def test_processes_training_at_once_all_use_the_copy_cached_first(tmp_path, monkeypatch, corpus):
    import datasets

    from hfssl.tokenizer import _cached_tokenizer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    theirs, ours = train_tokenizer(corpus[:500], vocab_size=300), train_tokenizer(corpus[500:1000], vocab_size=300)

    def train_while_another_process_caches_its_copy():
        (tmp_path / "hfssl-tokenizers" / "k").mkdir(parents=True)
        theirs.backend_tokenizer.save(str(tmp_path / "hfssl-tokenizers" / "k" / "tokenizer.json"))
        return ours

    got = _cached_tokenizer("k", "wordpiece", train_while_another_process_caches_its_copy)
    assert got.get_vocab() == theirs.get_vocab() != ours.get_vocab()
    assert [p.name for p in (tmp_path / "hfssl-tokenizers").iterdir()] == ["k"]
