"""Train a WordPiece (BERT-style) or byte-level BPE (RoBERTa-style) tokenizer on a corpus.

The training itself is the `tokenizers` library's; this module fixes the pieces a masked-LM
needs (normalizer, special tokens, [CLS] ... [SEP] template) and wraps the result as a
transformers fast tokenizer that `save_pretrained`/`AutoTokenizer` round-trip.

Reproducibility. `tokenizers`' WordPiece trainer is not deterministic: it numbers its `##`
continuation pieces in hash-map order, and those numbers break ties between equally frequent
merges (tokenizers issue 1794), so two trainings on the same texts differ in a few tokens and
in many ids. Byte-level BPE has no `##` pieces and gave the same vocabulary in every repeated
training we tried (tokenizers 0.23), but nothing in `tokenizers` promises it. So that
the same command gives the same model, `resolve_tokenizer` caches what it trains under the
`datasets` cache (`<HF_DATASETS_CACHE>/hfssl-tokenizers/<key>/tokenizer.json`), keyed by a
hash of the exact texts the trainer reads (in order) and of every option that shapes the
result (type, vocabulary size, training samples, special tokens, `tokenizers` version); a rerun
reuses it. What still varies across machines, or on one machine once the cache is cleared:
a fresh WordPiece training (the key is the same, the vocabulary may not be), so two machines
share a vocabulary only by sharing the cached file or the saved tokenizer; another `tokenizers`
version (a new key, hence a new training); and the corpus itself, whose texts and order come
from the data (the embedded default corpus holds the docstrings of the installed Python and
packages, and a shuffled or re-split corpus is another corpus).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "check_mask_token",
    "load_tokenizer",
    "resolve_tokenizer",
    "tokenizer_cache_dir",
    "tokenizer_cache_key",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

_WORDPIECE_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_BPE_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
_SPECIALS = {"wordpiece": _WORDPIECE_SPECIALS, "bpe": _BPE_SPECIALS}
_CACHE_FORMAT = 1  # bump when train_tokenizer's pipeline (normalizer, template, ...) changes, so old entries are not reused


def _nonempty(stream: Iterable[str]) -> Iterator[str]:
    """The texts the trainer reads: non-empty strings."""
    for t in stream:
        if isinstance(t, str) and t.strip():
            yield t


def _as_transformers(tok: Tokenizer, specials: dict[str, str]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials, model_max_length=512)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, kind: str = "wordpiece") -> PreTrainedTokenizerFast:
    """Train a tokenizer on `texts`; uncased WordPiece like BERT, or cased byte-level BPE like RoBERTa."""
    if kind == "wordpiece":
        specials = _WORDPIECE_SPECIALS
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, strip_accents=None)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(specials.values()))
    elif kind == "bpe":
        specials = _BPE_SPECIALS
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(specials.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise ValueError(f"--tokenizer_type must be 'wordpiece' or 'bpe', got {kind!r}.")

    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    if tok.get_vocab_size() <= len(specials):
        raise ValueError("The tokenizer training text is empty: give a --train_file with text in it.")
    cls, sep = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return _as_transformers(tok, specials)


def tokenizer_cache_key(texts: Iterable[str], kind: str, vocab_size: int, training_samples: int) -> str:
    """A hash of the texts the trainer reads, in order, and of every option that shapes the tokenizer."""
    options = {
        "type": kind,
        "vocab_size": vocab_size,
        "training_samples": training_samples,
        "special_tokens": _SPECIALS.get(kind),
        "tokenizers": tokenizers.__version__,
        "format": _CACHE_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for text in _nonempty(texts):
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: ["ab", "c"] != ["a", "bc"]
    return digest.hexdigest()[:32]


def tokenizer_cache_dir() -> Path:
    """Where trained tokenizers are kept, beside the `datasets` cache of the corpora they came from."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "hfssl-tokenizers"


def _cached_tokenizer(key: str, kind: str, train: Callable[[], PreTrainedTokenizerFast]) -> PreTrainedTokenizerFast:
    """The tokenizer cached under `key`, else `train()`'s, saved atomically and then read back.

    Reading back what the cache holds means that processes which trained at the same time (one per
    GPU under `accelerate launch`) all use the copy that reached the cache first.
    """
    target = tokenizer_cache_dir() / key
    file = target / "tokenizer.json"
    if file.is_file():
        logger.info("Reusing the tokenizer trained on this corpus (cache key %s, in %s)", key, target)
        return _as_transformers(Tokenizer.from_file(str(file)), _SPECIALS[kind])
    trained = train()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent)
        try:
            trained.backend_tokenizer.save(os.path.join(staging, "tokenizer.json"))
            os.replace(staging, target)
        except OSError:
            if not file.is_file():  # not another process's copy in the way: a real failure
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        logger.warning("Could not cache the trained tokenizer in %s (%s); a rerun will train it again.", target, err)
        return trained
    logger.info("Cached the trained tokenizer (cache key %s, in %s); a rerun on this corpus reuses it", key, target)
    return _as_transformers(Tokenizer.from_file(str(file)), _SPECIALS[kind])


def check_mask_token(tokenizer: PreTrainedTokenizerFast, option: str) -> None:
    """Masked-token pretraining needs a mask token; say which option to change when it is missing."""
    if tokenizer.mask_token is None:
        raise ValueError(
            f"The tokenizer from {option} has no mask token, so it cannot be used for masked-token "
            "pretraining. Use a masked-LM tokenizer (BERT, RoBERTa, ...) or --train_tokenizer."
        )


def load_tokenizer(name_or_path: str, option: str, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """AutoTokenizer.from_pretrained with an error that names the option when it cannot load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"--{option} {name_or_path}: cannot load a tokenizer ({err}).") from None


def resolve_tokenizer(model_args: Any, train: Any, text_column: str, resume: str | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer asked for: --tokenizer_name, the model's own, or one trained on the training split.

    A resumed run reuses the tokenizer saved in its checkpoint: `tokenizers` training is not
    bit-reproducible (ties in its hash maps), and a new vocabulary would scramble the embeddings.
    A trained tokenizer is cached by corpus and options, so rerunning the command reuses it (see
    the module docstring for what still varies); delete `tokenizer_cache_dir()` to train afresh.
    The key costs one extra read of the training texts (a second pass over a stream).
    """
    if resume is not None and os.path.isfile(os.path.join(resume, "tokenizer_config.json")):
        return load_tokenizer(resume, "resume_from_checkpoint")
    if model_args.tokenizer_name:
        return load_tokenizer(model_args.tokenizer_name, "tokenizer_name", model_args.trust_remote_code)
    train_new = model_args.train_tokenizer
    if train_new is None:
        train_new = model_args.model_name_or_path is None
    if not train_new:
        if model_args.model_name_or_path is None:
            raise ValueError("A from-scratch model needs a tokenizer: pass --tokenizer_name or --train_tokenizer true.")
        return load_tokenizer(model_args.model_name_or_path, "model_name_or_path", model_args.trust_remote_code)
    kind, vocab_size, samples = model_args.tokenizer_type, model_args.vocab_size, model_args.tokenizer_training_samples

    def texts() -> Iterator[str]:
        return (row[text_column] for row in train.take(samples))

    def train_new_tokenizer() -> PreTrainedTokenizerFast:
        logger.info("Training a %s tokenizer (vocab %d) on the training split", kind, vocab_size)
        return train_tokenizer(texts(), vocab_size, kind)

    return _cached_tokenizer(tokenizer_cache_key(texts(), kind, vocab_size, samples), kind, train_new_tokenizer)
