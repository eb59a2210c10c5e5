"""The model through transformers: built from the recipe, its FLOPs, its export and LoRA adapter directories."""
