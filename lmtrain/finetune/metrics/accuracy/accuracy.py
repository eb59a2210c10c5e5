"""Accuracy: the share of predictions equal to their reference label."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all predictions:
    accuracy = (number of predictions equal to their reference) / (number of predictions)
It lies in [0, 1]. With unbalanced classes, compare it with the majority-class baseline (the
accuracy of always predicting the most frequent label), or report macro-F1 next to it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels, as many as predictions.
    sample_weight (`list` of `float`, optional): a weight per example (default 1 each).
Returns:
    accuracy (`float`): the (weighted) share of correct predictions, in [0, 1].
Example:
    >>> metric = evaluate.load("lmtrain/finetune/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if len(predictions) == 0:
            raise ValueError("accuracy of no predictions is undefined")
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        return {"accuracy": float(np.sum(weights * (predictions == references)) / np.sum(weights))}
