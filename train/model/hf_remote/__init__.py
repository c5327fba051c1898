"""The remote-code bundle's modeling file (copied verbatim into an export folder by `train.model.hf_bundle`)."""
