"""Downstream evaluation: multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness scores them.

    tasks     the items of a task (a local JSONL file, or built from held-out text: line_completion), checked
    scoring   lm-eval's requests for them (tokenization, left truncation) and its acc / acc_norm
    harness   lm-eval task configs for local tasks, and `lm_eval` on a model directory or Hub repo

The forwards that score the requests during training live in lmtrain/training/downstream.py.
"""
