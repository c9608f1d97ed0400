"""emtrait: watch a finetune drift in alignment-trait space and flag emergent misalignment.

Importing the package is cheap on purpose: torch, transformers and friends are imported inside
the functions that need them, so `emtrait --help` and the Snakefile start fast.
"""

__version__ = "0.1.0"
