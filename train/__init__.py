"""VLM assembly, stage freezing, the DeepSpeed engine, checkpoints, export and `train launch`."""
