"""Exact match: the share of generated answers equal to their reference, up to whitespace."""

import re

import datasets
import evaluate

_DESCRIPTION = """
An answer matches when it equals its reference after both are normalised the same way: leading and
trailing whitespace removed and every run of whitespace (spaces, tabs, newlines) made one space. Case and
punctuation count: "The sum is 7." does not match "the sum is 7". The score lies in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): reference answers, as many as predictions.
Returns:
    exact_match (`float`): the share of predictions equal to their reference, in [0, 1].
Example:
    >>> metric = evaluate.load("lmtrain/finetune/metrics/exact_match")
    >>> metric.compute(predictions=["The sum is 7. ", "red"], references=["The sum is  7.", "red red"])
    {'exact_match': 0.5}
"""

_CITATION = ""


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("exact match of no predictions is undefined")
        same = [normalise(p) == normalise(r) for p, r in zip(predictions, references)]
        return {"exact_match": sum(same) / len(same)}
