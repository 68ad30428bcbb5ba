"""Held-out evaluation and rubric-reward diagnostics against ground truth."""
