"""Training: imbalance strategies, augmentation, the loop, and the run folder format."""
