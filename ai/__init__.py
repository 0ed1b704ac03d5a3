"""The spine models: landmark detection, per-level grading, training and evaluation."""
