"""Images a build must not store, by content: the sha256 digests of files they may not equal (benchmark images).

`mixer build` fills it from the manifest's `eval:` benchmarks (`mixer.decontaminate`); `shards` only compares digests.
The digest is of the image FILE as fetched or read, before any decode: it costs one hash of bytes the build already
holds (the status table records the same digest), and it never needs a full decode of either side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Exclusion:
    """sha256 digest (32 raw bytes) → what it is (`pope:val2014/x.jpg`), the name put in the status row."""

    digests: Mapping[bytes, str]
    ident: str = field(init=False)
    """A hash of the digest set: recorded in each shard's `made_from`, so a changed set rebuilds the shards."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ident", hashlib.sha256(b"".join(sorted(self.digests))).hexdigest()[:16])

    def match(self, data: bytes) -> str | None:
        """What `data` is a copy of, or None."""
        return self.digests.get(hashlib.sha256(data).digest())
