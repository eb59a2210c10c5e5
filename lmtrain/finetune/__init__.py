"""Fine-tuning tasks (SFT, classification) on a pretrained model, trained by the same `fit`."""
