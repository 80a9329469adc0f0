from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hfssl.args import ImageClassificationDataArguments, TextClassificationDataArguments, TransferArguments
from hfssl.data.classification import (
    balanced_class_weights,
    load_image_classification,
    load_text_classification,
    per_class_sample,
)
from hfssl.data.samples import DOCSTRING_FAMILIES, python_docs_labeled
from hfssl.metrics.report import load_metric, majority_accuracy

WORDS = {"cat": "whiskers purr meow", "dog": "bark fetch wag", "bird": "wings nest tweet"}


def write_csv(path, rows) -> str:
    pd.DataFrame(rows, columns=["body", "kind"]).to_csv(path, index=False)
    return str(path)


def animal_rows(n_per_class: int, classes=("cat", "dog", "bird")):
    return [(f"{WORDS[c]} example {i}", c) for c in classes for i in range(n_per_class)]


@pytest.mark.slow
def test_embedded_labeled_docstrings_are_a_real_multiclass_task():
    texts, labels, names = python_docs_labeled()
    counts = collections.Counter(labels)
    assert names == list(DOCSTRING_FAMILIES) and len(counts) == len(names)
    assert len(texts) > 1500 and min(counts.values()) >= 100
    assert len(set(texts)) == len(texts)  # a paragraph is never in two classes
    assert any("event loop" in t for t, y in zip(texts, labels) if names[y] == "asyncio")


def test_csv_with_named_columns_is_split_stratified(tmp_path):
    data = load_text_classification(
        TextClassificationDataArguments(
            train_file=write_csv(tmp_path / "d.csv", animal_rows(20)),
            text_column="body",
            label_column="kind",
            validation_split_percentage=25,
        )
    )
    assert data.label_names == ["bird", "cat", "dog"] and data.text_column == "body"
    held = collections.Counter(data.splits["validation"]["labels"])
    assert held == {0: 5, 1: 5, 2: 5}  # 25% of every class
    assert len(data.splits["train"]) == 45
    for row in data.splits["train"]:
        assert data.label_names[row["labels"]] in row["body"] or WORDS[data.label_names[row["labels"]]] in row["body"]


def test_validation_file_and_per_class_sampling(tmp_path):
    args = TextClassificationDataArguments(
        train_file=write_csv(tmp_path / "train.csv", animal_rows(30)),
        validation_file=write_csv(tmp_path / "val.csv", animal_rows(4)),
        text_column="body",
        label_column="kind",
        train_samples_per_class=7,
        max_eval_samples=10,
    )
    data = load_text_classification(args, seed=3)
    assert collections.Counter(data.splits["train"]["labels"]) == {0: 7, 1: 7, 2: 7}
    assert len(data.splits["validation"]) == 10
    again = load_text_classification(args, seed=3)
    assert again.splits["train"]["body"] == data.splits["train"]["body"]  # the same subset for the same seed


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_label_column", r"--label_column 'label' is not in the data; its columns are: body, kind"),
        ("single_class", r"single class \('cat'\)"),
        ("unseen_eval_label", r"labels never seen in training: 'fish'"),
        ("txt", r"labeled text needs a \.csv"),
    ],
)
def test_bad_labeled_text_fails_clearly(tmp_path, case, message):
    train = write_csv(tmp_path / "train.csv", animal_rows(5, ("cat",)) if case == "single_class" else animal_rows(5))
    kw = dict(train_file=train, text_column="body", label_column="kind")
    if case == "no_label_column":
        kw.pop("label_column")
    if case == "unseen_eval_label":
        kw["validation_file"] = write_csv(tmp_path / "val.csv", animal_rows(2) + [("gills fins", "fish")])
    if case == "txt":
        (tmp_path / "t.txt").write_text("some text\n")
        kw["train_file"] = str(tmp_path / "t.txt")
    with pytest.raises(ValueError, match=message):
        load_text_classification(TextClassificationDataArguments(**kw))


def test_per_class_sample_keeps_small_classes_whole():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    picked = per_class_sample(labels, 4, seed=0)
    assert collections.Counter(labels[picked].tolist()) == {0: 4, 1: 3, 2: 4}
    assert len(set(picked.tolist())) == len(picked)


def test_balanced_class_weights_and_majority_baseline():
    labels = np.array([0, 0, 0, 1])
    assert balanced_class_weights(labels, 3).tolist() == pytest.approx([4 / 6, 2.0, 1.0])
    assert majority_accuracy(labels, np.array([0, 1, 1, 0, 2])) == pytest.approx(0.4)


def _image_folder(root, classes, per_class=6):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return str(root)


def test_image_folders_give_labels_and_few_label_subsets(tmp_path):
    args = ImageClassificationDataArguments(
        train_dir=_image_folder(tmp_path / "train", ["ant", "bee", "cow"]),
        validation_dir=_image_folder(tmp_path / "val", ["bee", "cow"], 2),
        train_samples_per_class=4,
    )
    splits = load_image_classification(args)
    assert splits.class_names == ["ant", "bee", "cow"]
    assert collections.Counter(splits.train.labels.tolist()) == {0: 4, 1: 4, 2: 4}
    assert splits.validation.labels.tolist() == [1, 1, 2, 2]  # "bee", "cow" mapped into the training label space


def test_max_samples_with_validation_dir_draw_from_every_class(tmp_path):
    # The folders are read class by class: the first N images would all be of the first classes.
    args = ImageClassificationDataArguments(
        train_dir=_image_folder(tmp_path / "train", ["ant", "bee", "cow"]),
        validation_dir=_image_folder(tmp_path / "val", ["ant", "bee", "cow"], 4),
        max_train_samples=9,
        max_eval_samples=6,
    )
    splits = load_image_classification(args)
    assert len(splits.train) == 9 and len(splits.validation) == 6
    assert set(splits.train.labels.tolist()) == {0, 1, 2} and len(set(splits.validation.labels.tolist())) >= 2


def test_embedded_digits_are_the_default_image_task():
    splits = load_image_classification(ImageClassificationDataArguments())
    assert splits.class_names == [str(d) for d in range(10)]
    assert len(splits.train) + len(splits.validation) == 1797
    assert set(splits.validation.labels.tolist()) == set(range(10))


@pytest.mark.parametrize(
    "case, message",
    [
        ("unseen", r"--validation_dir has classes never seen in training: 'dog'"),
        ("flat", r"needs one subfolder per class"),
    ],
)
def test_bad_image_folders_fail_clearly(tmp_path, case, message):
    train = _image_folder(tmp_path / "train", ["ant", "bee"])
    if case == "unseen":
        args = ImageClassificationDataArguments(train_dir=train, validation_dir=_image_folder(tmp_path / "val", ["dog"], 1))
    else:
        flat = tmp_path / "flat"
        flat.mkdir()
        Image.new("RGB", (4, 4)).save(flat / "a.png")
        Image.new("RGB", (4, 4)).save(flat / "b.png")
        args = ImageClassificationDataArguments(train_dir=str(flat))
    with pytest.raises(ValueError, match=message):
        load_image_classification(args)


def test_shipped_metric_module_loads_offline_and_matches_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    refs, preds = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    preds[:120] = refs[:120]
    scores = load_metric().compute(predictions=preds, references=refs, label_names=["a", "b", "c", "d", "e"])
    assert scores["accuracy"] == pytest.approx(np.mean(preds == refs))
    assert scores["f1_macro"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert scores["precision_macro"] == pytest.approx(precision_score(refs, preds, average="macro"))
    assert scores["recall_macro"] == pytest.approx(recall_score(refs, preds, average="macro"))
    assert scores["per_class"]["b"]["support"] == int(np.sum(refs == 1)) and scores["per_class"]["e"]["support"] == 0
    assert np.array_equal(np.array(scores["confusion_matrix"])[:4, :4], confusion_matrix(refs, preds))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(strategy="adapters"), "--strategy must be one of full, lora, linear_probe, freeze, lp_ft"),
        (dict(strategy="freeze"), "--strategy freeze needs --freeze_layers"),
        (dict(freeze_layers=2), "--freeze_layers only applies"),
        (dict(merge_lora=True), "--merge_lora only applies to --strategy lora"),
        (dict(strategy="lora", l2sp_alpha=0.1), "--l2sp_alpha has nothing to pull"),
        (dict(layer_decay=0.0), "--layer_decay must be in"),
        (dict(seeds="1,1"), "--seeds must list distinct"),
        (dict(seeds="1,x"), "--seeds must be comma-separated integers"),
        (dict(class_weights="inverse"), "--class_weights must be"),
    ],
)
def test_bad_transfer_options_name_the_flag(kw, message):
    with pytest.raises(ValueError, match=message):
        TransferArguments(**kw)


def test_sampling_options_are_exclusive():
    with pytest.raises(ValueError, match="--max_train_samples or --train_samples_per_class"):
        TextClassificationDataArguments(max_train_samples=10, train_samples_per_class=2)
