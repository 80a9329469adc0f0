"""Evaluation that works offline: probes of frozen features (kNN, linear), and metric modules."""
