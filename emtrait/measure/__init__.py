"""Measurement: eval prompts, the probe, the run store, reading directions."""
