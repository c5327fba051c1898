"""Deep merge of manifest data: how a manifest `extends:` another and how an ablation's proxy overrides `model:`.

Mappings merge key by key; anything else (lists included: a derived manifest restates its `stages`) is replaced.
"""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
