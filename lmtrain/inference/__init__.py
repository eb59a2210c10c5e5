"""Inference with plain transformers APIs: generation, chat, batch jobs and classification (generate.py)."""
