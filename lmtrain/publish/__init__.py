"""What leaves a run: model cards, the loss curve, and uploads to a model hub (huggingface_hub)."""
