"""lm-evaluation-harness's scoring of multiple-choice items, so that the figure in the loop is the figure lm_eval
gives for the same model and task (tests/test_downstream.py runs both).

As lm-eval 0.4 (`multiple_choice` output type, HFLM): each choice is a request (context, delimiter + choice);
trailing whitespace of the context moves to the start of the continuation; the continuation's tokens are those
of tokenize(context + continuation) past tokenize(context), with the tokenizer's own special-token default; an
empty context is the bos (or eos) token. A request longer than the model's context keeps its last
max_length + 1 tokens (truncated from the left). acc takes the choice of highest summed log-probability,
acc_norm the highest after dividing by the choice's length in characters; ties go to the first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmtrain.errors import UserError
from lmtrain.evals.tasks import LocalTask


@dataclass(frozen=True)
class Request:
    """One choice of one item, as token ids: the model reads `tokens` and scores its last `continuation`
    predictions (of tokens[1:] and the dropped last token, `target`)."""

    task: int
    item: int
    tokens: tuple[int, ...]
    """The model's input: (context + continuation), cut to max_length + 1 from the left, without its last token."""
    targets: tuple[int, ...]
    """The continuation's tokens, predicted at the last len(targets) positions of `tokens`."""
    truncated: bool


def encode_requests(tasks: list[LocalTask], tokenizer, max_length: int) -> list[Request]:
    """Every choice of every item of `tasks`, in order, as lm-eval's HFLM encodes them for a model of
    `max_length` positions."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    requests = []
    for t, task in enumerate(tasks):
        for i, item in enumerate(task.items):
            for choice in item.choices:
                context, continuation = item.context, task.delimiter + choice
                if context:
                    stripped = context.rstrip()
                    context, continuation = stripped, context[len(stripped) :] + continuation
                    # verbose=False: no transformers warning for texts longer than the model (truncated below)
                    whole = tokenizer.encode(context + continuation, verbose=False)
                    context_ids = tokenizer.encode(context, verbose=False)
                    continuation_ids = whole[len(context_ids) :]
                else:
                    continuation_ids = tokenizer.encode(continuation, add_special_tokens=False, verbose=False)
                    context_ids = [prefix]
                    if continuation_ids[0] == prefix:  # as lm-eval: a continuation that starts with it
                        context_ids, continuation_ids = continuation_ids[:1], continuation_ids[1:]
                if not continuation_ids:
                    raise UserError(
                        f"eval task {task.name} ({task.origin}), item {i + 1}: choice {choice!r} adds no token to "
                        "the context; give it some text"
                    )
                if len(continuation_ids) > max_length:
                    raise UserError(
                        f"eval task {task.name} ({task.origin}), item {i + 1}: a choice is {len(continuation_ids)} "
                        f"tokens, longer than the model's context of {max_length}; shorten it or drop the item (a built "
                        "task: give the model a longer context, data.seq_len)"
                    )
                whole = (context_ids + continuation_ids)[-(max_length + 1) :]
                truncated = len(context_ids) + len(continuation_ids) > max_length + 1
                requests.append(Request(t, i, tuple(whole[:-1]), tuple(continuation_ids), truncated))
    return requests


def choice_metrics(task: LocalTask, loglikelihoods: np.ndarray) -> dict[str, float]:
    """acc and acc_norm of `task` from the log-likelihoods of all of its choices, item after item."""
    correct = correct_norm = 0
    start = 0
    for item in task.items:
        lls = loglikelihoods[start : start + len(item.choices)]
        start += len(item.choices)
        lengths = np.array([float(len(choice)) for choice in item.choices])
        correct += int(np.argmax(lls)) == item.gold
        correct_norm += int(np.argmax(lls / lengths)) == item.gold
    return {"acc": correct / len(task.items), "acc_norm": correct_norm / len(task.items)}


def chance(task: LocalTask) -> float:
    """The expected acc of guessing: the mean over items of 1 / choices."""
    return float(np.mean([1 / len(item.choices) for item in task.items]))
