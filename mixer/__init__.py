"""Manifests, length index, mixture planning, chat templates, sequence packing, the loader, inspect and ablate."""
