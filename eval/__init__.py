"""Evaluation, metrics and the efficiency benchmark."""
