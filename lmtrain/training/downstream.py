"""Downstream tasks scored on the model being trained (no second copy), every rank in lockstep.

The requests (lmtrain/evals/scoring.py) are sorted by length, longest first (as lm-eval does, so that a batch
pads little), and cut once, the same on any number of processes, into batches of at most `batch_tokens` padded
tokens: a training micro-batch's worth, so memory stays within training's, and short requests share a forward
(on the smoke run, 8 requests per forward made the tasks cost 7 % of training time; see docs/evaluation.md). Rank r
runs batches r, r + world, ...; a rank with one batch fewer runs a stand-in that is not counted, because under
ZeRO-3 every forward gathers parameters from all ranks. Each batch is the same wherever it runs, so its
log-likelihoods are the same bits on 1 or 2 processes; the ranks' log-likelihoods are summed into one vector
(each is written by one rank, zero elsewhere), and every rank computes the same metrics from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from lmtrain.evals.scoring import Request, choice_metrics, encode_requests
from lmtrain.evals.tasks import LocalTask
from lmtrain.training.task import to_device


class DownstreamEval:
    def __init__(self, tasks: list[LocalTask], tokenizer, max_length: int, batch_tokens: int):
        self.tasks = tasks
        self.requests = encode_requests(tasks, tokenizer, max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        order = sorted(range(len(self.requests)), key=lambda r: (-len(self.requests[r].tokens), r))
        self.batches: list[list[int]] = []
        for r in order:  # the first request of a batch is its longest: the batch is padded to it
            batch = self.batches[-1] if self.batches else None
            if batch and (len(batch) + 1) * len(self.requests[batch[0]].tokens) <= batch_tokens:
                batch.append(r)
            else:
                self.batches.append([r])

    def describe(self) -> str:
        parts = []
        for t, task in enumerate(self.tasks):
            truncated = len({r.item for r in self.requests if r.task == t and r.truncated})
            cut = f", {truncated} truncated from the left to the model's context" if truncated else ""
            parts.append(f"{task.name} ({len(task.items)} items{cut})")
        return "downstream: " + ", ".join(parts)

    @torch.no_grad()
    def evaluate(self, model, accelerator: Accelerator) -> dict[str, float]:
        """`<task>/acc` and `<task>/acc_norm` of every task; every process calls it."""
        world, rank = accelerator.num_processes, accelerator.process_index
        lls = torch.zeros(len(self.requests), dtype=torch.float64, device=accelerator.device)
        was_training = model.training
        model.eval()
        for k in range(math.ceil(len(self.batches) / world)):
            index = k * world + rank
            counted = index < len(self.batches)
            batch = self.batches[index if counted else 0]
            values = self._loglikelihoods(model, accelerator, [self.requests[r] for r in batch])
            if counted:
                lls[batch] = values.to(lls)
        model.train(was_training)
        lls = accelerator.reduce(lls, reduction="sum").cpu().numpy()
        metrics = {}
        for t, task in enumerate(self.tasks):
            mine = np.array([r.task == t for r in self.requests])
            for name, value in choice_metrics(task, lls[mine]).items():
                metrics[f"{task.name}/{name}"] = value
        return metrics

    def _loglikelihoods(self, model, accelerator: Accelerator, requests: list[Request]) -> torch.Tensor:
        """The summed log-probability of each request's continuation. Right padding, no attention mask (as lm-eval):
        causal attention keeps padding out of every real position; only the positions that score a
        continuation go through the output layer (logits_to_keep)."""
        width = max(len(r.tokens) for r in requests)
        inputs = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        for row, r in enumerate(requests):
            inputs[row, : len(r.tokens)] = torch.tensor(r.tokens)
        keep = width - min(len(r.tokens) - len(r.targets) for r in requests)
        batch = to_device({"input_ids": inputs, "use_cache": False, "logits_to_keep": keep}, accelerator.device)
        logprobs = F.log_softmax(model(**batch).logits.float(), dim=-1)
        values = []
        for row, r in enumerate(requests):
            end = len(r.tokens) - (width - keep)  # position of the request's last token among the kept ones
            targets = torch.tensor(r.targets, device=logprobs.device)
            picked = logprobs[row, end - len(r.targets) : end].gather(1, targets[:, None])
            values.append(picked.sum())
        return torch.stack(values).double()
