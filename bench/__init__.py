"""Benchmarks that measure tinymix against the tools a user would otherwise pick, side by side in one run."""
