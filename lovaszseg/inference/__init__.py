"""Inference: probabilities of a model or an ensemble, test-time augmentation, submissions and export."""
