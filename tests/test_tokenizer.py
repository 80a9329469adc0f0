from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from hfssl.tokenizer import check_mask_token, train_tokenizer


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
