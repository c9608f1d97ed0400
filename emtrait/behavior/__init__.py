"""Behavioural emergent-misalignment labels per checkpoint.

Two ways to a label, selected by `behavior.method`:

- `judge` (the literature): free-form answers to out-of-domain questions in Betley et al.'s YAML
  format, sampled from the checkpoint (`generate`), scored 0-100 for alignment and coherence by a
  judge (`judge`: an OpenAI-compatible endpoint, a local transformers model, or the organism's
  lexical judge), and reduced to an EM rate with a Wilson interval (`score`).
- `choice` (a judge-free, offline proxy): forced-choice log-probability margins between an aligned
  and a misaligned answer to out-of-domain questions (`choice`).

Pure maths (score parsing, conventions, intervals) lives in `scoring`; I/O sits at the edges.
"""
