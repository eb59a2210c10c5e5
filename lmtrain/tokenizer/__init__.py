"""The byte-level BPE tokenizer: training, saving, the fast corpus encoder and the quality report."""
