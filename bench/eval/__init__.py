"""Evaluation benchmarks: `train eval`'s batched generation against LLaVA's one-question-at-a-time loop."""
