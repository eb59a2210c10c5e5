"""Macro-F1: the unweighted mean over classes of each class's F1 score."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
For each class c: precision = TP / (TP + FP), recall = TP / (TP + FN) and
F1 = 2 · precision · recall / (precision + recall), the harmonic mean of the two (0 when TP = 0).
Macro-F1 averages the per-class F1 scores with equal weight, so a rare class counts as much as a
frequent one: always predicting the majority class scores well on accuracy but poorly here.
Classes that occur neither in the predictions nor in the references are left out of the mean
(as scikit-learn does), unless `num_labels` says how many classes there are.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels, as many as predictions.
    num_labels (`int`, optional): the number of classes, labels 0 .. num_labels-1; every one of them counts
        in the mean (a class never predicted and never present scores 0). Default: the labels seen.
Returns:
    macro_f1 (`float`): mean of the per-class F1 scores, in [0, 1].
    per_class_f1 (`list` of `float`): the F1 score of each class, in label order.
Example:
    >>> metric = evaluate.load("lmtrain/finetune/metrics/macro_f1")
    >>> metric.compute(predictions=[0, 0, 1, 1], references=[0, 1, 1, 1])["macro_f1"]
    0.7333333333333334
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if len(predictions) == 0:
            raise ValueError("F1 of no predictions is undefined")
        classes = np.arange(num_labels) if num_labels else np.union1d(predictions, references)
        scores = []
        for c in classes:
            tp = np.sum((predictions == c) & (references == c))
            fp = np.sum((predictions == c) & (references != c))
            fn = np.sum((predictions != c) & (references == c))
            scores.append(0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn)))
        return {"macro_f1": float(np.mean(scores)), "per_class_f1": scores}
