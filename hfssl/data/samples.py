"""Embedded default datasets that exist on any machine where hfssl is installed.

Text: English prose from the installed Python standard library: its language reference
(`pydoc_data/topics.py`, the text behind `help("assert")`) and its docstrings, both read with
`ast` (nothing is imported or executed). Images: scikit-learn's bundled handwritten digits.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_IMAGE_NAME",
    "DEFAULT_TEXT_LABELED_NAME",
    "DEFAULT_TEXT_NAME",
    "DOCSTRING_FAMILIES",
    "digits_images",
    "python_docs_corpus",
    "python_docs_labeled",
]

DEFAULT_TEXT_NAME = "python-stdlib-docstrings"
DEFAULT_TEXT_LABELED_NAME = "python-stdlib-docstring-packages"
DEFAULT_IMAGE_NAME = "sklearn-digits"
# Large, distinct standard-library packages (present in every Python >= 3.10): the labels of
# the embedded text-classification task, "which package does this docstring paragraph document?"
DOCSTRING_FAMILIES = ("asyncio", "email", "http", "importlib", "logging", "tkinter", "unittest", "xml")

# Test suites and bundled third-party code are not prose written for readers.
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "ensurepip", "turtledemo", "__pycache__"}
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[{}\[\]()])")


def _paragraphs(doc: str) -> list[str]:
    """Split a docstring into prose paragraphs, dropping doctests, signatures and tables."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        raw_lines = [ln for ln in block.splitlines() if ln.strip()]
        if not raw_lines or raw_lines[0][0].isspace():  # indented: code, grammar or a table
            continue
        lines = [ln.strip() for ln in raw_lines]
        if any(_CODE_LINE.match(ln) for ln in lines):
            continue
        text = " ".join(lines)
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if len(text) >= 60 and letters / len(text) > 0.85 and len(text.split()) >= 10:
            out.append(text)
    return out


def _reference_topics(stdlib: Path) -> list[str]:
    """The language reference texts that pydoc shows, from the dict literal in pydoc_data/topics.py."""
    path = stdlib / "pydoc_data" / "topics.py"
    if not path.is_file():
        return []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            return [topics[k] for k in sorted(topics)]
    return []


def _docstrings(stdlib: Path) -> Iterator[str]:
    for _, doc in _file_docstrings(stdlib):
        yield doc


def _file_docstrings(stdlib: Path, packages: tuple[str, ...] | None = None) -> Iterator[tuple[Path, str]]:
    """(file, docstring) pairs, files in sorted order (only under `packages` when given), skipping tests and bundled code."""
    roots = [stdlib] if packages is None else [stdlib / p for p in sorted(packages)]
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield path, doc


def python_docs_corpus(max_documents: int | None = None) -> list[str]:
    """Prose paragraphs from the standard library's reference and docstrings, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    docs: list[str] = []
    for text in chain(_reference_topics(stdlib), _docstrings(stdlib)):
        for para in _paragraphs(text):
            if para not in seen:
                seen.add(para)
                docs.append(para)
                if max_documents is not None and len(docs) >= max_documents:
                    return docs
    if not docs:
        raise RuntimeError(f"No documentation found under {stdlib}; pass --train_file to use your own text.")
    return docs


def python_docs_labeled(families: tuple[str, ...] = DOCSTRING_FAMILIES) -> tuple[list[str], list[int], list[str]]:
    """Docstring paragraphs labeled by the package they document: a real labeled text task that needs no download.

    Returns (texts, labels, label names). A paragraph found in two packages is dropped as ambiguous.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    owner: dict[str, int | None] = {}
    for path, doc in _file_docstrings(stdlib, families):
        label = families.index(path.relative_to(stdlib).parts[0])
        for para in _paragraphs(doc):
            owner[para] = label if owner.get(para, label) == label else None
    pairs = [(text, label) for text, label in owner.items() if label is not None]
    if len({label for _, label in pairs}) < 2:
        raise RuntimeError(f"Too few documented packages under {stdlib}; pass --train_file to use your own labeled text.")
    return [t for t, _ in pairs], [label for _, label in pairs], list(families)


def digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 1,797 8x8 handwritten digits as uint8 images (N, 8, 8), labels (N,), and class names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64), [str(c) for c in digits.target_names]
