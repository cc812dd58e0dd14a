"""Evaluation: whether a fine-tune helped, measured with N and confidence intervals."""
