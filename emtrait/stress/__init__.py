"""Stress tests of a calibrated monitor: training variants and misaligned starting points."""
