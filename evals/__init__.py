"""Evaluations of train_gpt.py checkpoints: HellaSwag accuracy and text samples (see evals/README.md)."""
