"""Scoring: the streaming metrics engine, the metric catalogue, post-processing steps and evidence."""
