"""chrF: the character n-gram F-score of generated answers against their references (sacrebleu's CHRF)."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = """
chrF (Popović, 2015) compares character n-grams (n = 1..6, whitespace ignored) of the answers with those of
the references, over the whole set: precision and recall averaged over n, combined as an F-score that weighs
recall twice as much as precision (beta = 2). It scores 0-100. Unlike exact match it gives credit for nearly
right answers, and it needs no word segmentation, so it works as well on Chinese as on English. This is
sacrebleu's implementation (the reference one), with its defaults: a corpus-level score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): one reference answer per prediction.
Returns:
    chrf (`float`): the corpus chrF score, in [0, 100].
Example:
    >>> metric = evaluate.load("lmtrain/finetune/metrics/chrf")
    >>> metric.compute(predictions=["The sum is 7."], references=["The sum is 7."])
    {'chrf': 100.0}
"""

_CITATION = """
@inproceedings{popovic-2015-chrf, title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
  author = "Popovi{\\'c}, Maja", booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
  year = "2015", pages = "392--395"}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
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
            raise ValueError("chrF of no predictions is undefined")
        return {"chrf": float(sacrebleu.metrics.CHRF().corpus_score(list(predictions), [list(references)]).score)}
