"""Benchmarks about the demo model (what it can learn in its budget)."""
