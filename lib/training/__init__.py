"""Training: the competition root as an nnU-Net dataset, the fine-tuning trainer, and train()."""
