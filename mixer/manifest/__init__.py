"""The manifest: one YAML file declaring sources, shard options, the model, stages, DeepSpeed and ablations.

`load_manifest` is the one way in: it validates once at the edge, and everything past it trusts the types.
"""

from mixer.manifest.errors import ManifestError
from mixer.manifest.load import load_manifest
from mixer.manifest.model import ModelConfig
from mixer.manifest.runtime import AblationConfig, DeepSpeedSettings
from mixer.manifest.schema import Manifest
from mixer.manifest.sources import SourceConfig
from mixer.manifest.stages import TRAINABLE, StageConfig

__all__ = [
    "TRAINABLE",
    "AblationConfig",
    "DeepSpeedSettings",
    "Manifest",
    "ManifestError",
    "ModelConfig",
    "SourceConfig",
    "StageConfig",
    "load_manifest",
]
