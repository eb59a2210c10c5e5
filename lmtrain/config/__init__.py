"""The recipe schema: one typed tree of dataclasses per entry point, loaded strictly (recipe.py, finetune.py)."""
