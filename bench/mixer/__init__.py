"""Mixer benchmarks (issue 4): packing efficiency, windowed share deviation, and loader throughput, side by side."""
