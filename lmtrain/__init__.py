"""lmtrain: the library behind this repository's entry points.

The subpackages follow the pipeline, each importing only those before it (tests/test_layout.py keeps it so):

    config      the recipe schema: typed sections, strict loading, overrides
    corpus      raw text: sources (files, the Hub, the standard library), cleaning, filters, dedup, mixture
    tokenizer   byte-level BPE: training, the fast corpus encoder, the quality report
    data        token shards: tokenize + pack (data_prep/), the resumable global-batch sampler
    model       transformers' Llama from the recipe, FLOPs, export, LoRA adapter directories
    evals       downstream multiple-choice tasks: items, lm-eval's scoring, lm-eval on a model directory
    publish     model cards, the loss curve, and the background uploader to a model hub
    training    the loop (`fit`), its optimizer and schedule, checkpoints, processes, publishing, pretraining's task
    finetune    SFT and classification tasks on top of `fit`
    inference   generation, chat and classification with plain transformers
    plan        the launch planner (train.py --plan)

errors, formatting and cli are shared by all of them.
"""
