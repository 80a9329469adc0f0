"""Train a WordPiece (BERT-style) or byte-level BPE (RoBERTa-style) tokenizer on a corpus.

The training itself is the `tokenizers` library's; this module fixes the pieces a masked-LM
needs (normalizer, special tokens, [CLS] ... [SEP] template) and wraps the result as a
transformers fast tokenizer that `save_pretrained`/`AutoTokenizer` round-trip.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["check_mask_token", "load_tokenizer", "resolve_tokenizer", "train_tokenizer"]

logger = logging.getLogger(__name__)

_WORDPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
_BPE_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}


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

    def nonempty(stream: Iterable[str]) -> Iterator[str]:
        for t in stream:
            if isinstance(t, str) and t.strip():
                yield t

    tok.train_from_iterator(nonempty(texts), trainer=trainer)
    if tok.get_vocab_size() <= len(specials):
        raise ValueError("The tokenizer training text is empty: give a --train_file with text in it.")
    cls, sep = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials, model_max_length=512)


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
    logger.info("Training a %s tokenizer (vocab %d) on the training split", model_args.tokenizer_type, model_args.vocab_size)
    texts = (row[text_column] for row in train.take(model_args.tokenizer_training_samples))
    return train_tokenizer(texts, model_args.vocab_size, model_args.tokenizer_type)
