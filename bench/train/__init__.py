"""Training benchmarks: the real loader's overhead on step time, tokens/s of the demo and a ~100M config, and MFU."""
