"""Accuracy, macro precision / recall / F1, a per-class report and the confusion matrix, in one pass.

An `evaluate` metric module that ships inside hfssl, so it loads offline by path:
`evaluate.load(".../hfssl/metrics/classification")`. The numbers are scikit-learn's.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = "Single-label classification scores: accuracy, macro precision / recall / F1, per-class scores, confusion matrix."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    label_names (`list` of `str`, optional): class names by id; the per-class report and the confusion matrix
        cover every class named here (default: the ids that occur).
Returns:
    accuracy, precision_macro, recall_macro, f1_macro (`float`),
    per_class (`dict`: name -> {precision, recall, f1, support}),
    confusion_matrix (`list` of `list` of `int`: rows are true classes, columns predicted ones).
Examples:
    >>> metric = evaluate.load("hfssl/metrics/classification")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, label_names=None):
        ids = list(range(len(label_names))) if label_names else sorted(set(references) | set(predictions))
        names = list(label_names) if label_names else [str(i) for i in ids]
        macro = precision_recall_fscore_support(references, predictions, average="macro", zero_division=0)  # as evaluate's f1
        precision, recall, f1, support = precision_recall_fscore_support(references, predictions, labels=ids, zero_division=0)
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "precision_macro": float(macro[0]),
            "recall_macro": float(macro[1]),
            "f1_macro": float(macro[2]),
            "per_class": {
                name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for name, p, r, f, s in zip(names, precision, recall, f1, support)
            },
            "confusion_matrix": np.asarray(confusion_matrix(references, predictions, labels=ids)).tolist(),
        }
