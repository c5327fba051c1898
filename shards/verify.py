"""`mixer verify BUILD`: re-read every shard of a build against its index and report damage by shard and key.

Per source: each shard's files against the sizes and row counts its stats recorded (as a resume checks them), the
merged index against the shards on disk, each tar's members (name, offset, size) or each Parquet row's key against
the index rows, each member's bytes against its recorded crc32, and the status table's stored keys against the index.
"""

from __future__ import annotations

import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
from tqdm import tqdm

from shards import fs
from shards.index import MERGED_INDEX, TAR_MEMBERS, ShardReader, shard_name
from shards.resume import scan_source


@dataclass(frozen=True)
class Damage:
    """One problem: where (source, shard or None, key or None) and what."""

    source: str
    shard: int | None
    key: str | None
    problem: str

    def __str__(self) -> str:
        where = [self.source]
        if self.shard is not None:
            where.append(f"shard {self.shard:05d}")
        if self.key is not None:
            where.append(f"key {self.key}")
        return f"{' '.join(where)}: {self.problem}"


@dataclass
class VerifyReport:
    """What `verify_build` checked and found."""

    sources: int = 0
    shards: int = 0
    samples: int = 0
    damage: list[Damage] = field(default_factory=list)


def verify_build(out: str, progress: bool = True) -> VerifyReport:
    """Verify every source folder under `out/sources/`; a build without that folder is a ValueError."""
    root = fs.join(out, "sources")
    names = fs.list_names(root)
    if not names:
        raise ValueError(f"{root}: no sources found (not a build folder? run `mixer build` first)")
    report = VerifyReport()
    for name in names:
        report.sources += 1
        verify_source(fs.join(root, name), name, report, progress)
    return report


def verify_source(out_dir: str, name: str, report: VerifyReport, progress: bool = True) -> None:
    """Add the damage of one source folder to `report`."""
    damage = report.damage
    on_disk = scan_source(out_dir)
    for shard, state in on_disk.items():
        if state.damage:
            damage.append(Damage(name, shard, None, state.damage))
    try:
        rows = pq.read_table(fs.join(out_dir, MERGED_INDEX)).to_pylist()
    except (OSError, ValueError) as e:
        damage.append(Damage(name, None, None, f"{MERGED_INDEX} unreadable: {type(e).__name__}: {e}"))
        return
    by_shard: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for row in rows:
        if row["key"] in seen:
            damage.append(Damage(name, row["shard"], row["key"], "key indexed twice"))
        seen.add(row["key"])
        by_shard[row["shard"]].append(row)
    for shard in sorted(set(by_shard) - set(on_disk)):
        damage.append(Damage(name, shard, None, f"in {MERGED_INDEX} but no such shard on disk"))
    for shard in sorted(set(on_disk) - set(by_shard)):
        if (on_disk[shard].stats or {}).get("stored", 0):
            damage.append(Damage(name, shard, None, f"stored samples missing from {MERGED_INDEX}"))
    # Damaged shards are read too, so that the keys they lost are named. The bar shows on a terminal only.
    with ShardReader(out_dir, verify=False) as reader:
        for shard in tqdm(
            sorted(set(on_disk) & set(by_shard)), desc=name, unit=" shards", disable=None if progress else True
        ):
            report.shards += 1
            report.samples += len(by_shard[shard])
            damage += _verify_shard(out_dir, name, shard, on_disk[shard].stats or {}, by_shard[shard], reader)


def _verify_shard(
    out_dir: str, name: str, shard: int, stats: dict[str, Any], rows: list[dict[str, Any]], reader: ShardReader
) -> list[Damage]:
    found: list[Damage] = []
    if rows[0]["row_group"] < 0:  # a tar shard
        found += _tar_layout(out_dir, name, shard, rows)
    try:
        status = pq.read_table(fs.join(out_dir, shard_name(shard, "status")), columns=["key", "status"]).to_pylist()
    except (OSError, ValueError) as e:
        found.append(Damage(name, shard, None, f"status table unreadable: {type(e).__name__}"))
    else:
        stored = {r["key"] for r in status if r["status"] == "success"}
        indexed = {r["key"] for r in rows}
        for key in sorted(stored - indexed):
            found.append(Damage(name, shard, key, "stored per the status table but not in the index"))
        for key in sorted(indexed - stored):
            found.append(Damage(name, shard, key, "in the index but not stored per the status table"))
    for row in rows:
        try:
            members = reader.members(row)
        except (OSError, ValueError, KeyError, IndexError) as e:
            found.append(Damage(name, shard, row["key"], f"unreadable: {type(e).__name__}: {e}"))
            continue
        found += _checksums(name, shard, row, members)
    return found


def _checksums(name: str, shard: int, row: dict[str, Any], members: dict[str, Any]) -> Iterator[Damage]:
    for member in TAR_MEMBERS:
        want = row.get(f"{member}_crc32", -1)
        ext = row["image_ext"] if member == "image" else member
        if want is None or want < 0:
            continue
        data = members.get(ext)
        if data is None:
            yield Damage(name, shard, row["key"], f"{member} member missing")
        elif zlib.crc32(data) != want:
            yield Damage(name, shard, row["key"], f"{member} crc32 {zlib.crc32(data):08x}, index recorded {want:08x}")


def _tar_layout(out_dir: str, name: str, shard: int, rows: list[dict[str, Any]]) -> list[Damage]:
    """The tar's members by header against the index: every indexed member where the index says, nothing else."""
    expected: dict[str, tuple[str, int, int]] = {}
    for row in rows:
        for member in TAR_MEMBERS:
            if row[f"{member}_offset"] >= 0:
                ext = row["image_ext"] if member == "image" else member
                expected[f"{row['key']}.{ext}"] = (row["key"], row[f"{member}_offset"], row[f"{member}_size"])
    found: list[Damage] = []
    fsys, path = fs.resolve(fs.join(out_dir, shard_name(shard, "webdataset")))
    try:
        with fsys.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                want = expected.pop(info.name, None)
                key = info.name.split(".", 1)[0]
                if want is None:
                    found.append(Damage(name, shard, key, f"tar member {info.name} not in the index"))
                elif (info.offset_data, info.size) != want[1:]:
                    found.append(
                        Damage(
                            name,
                            shard,
                            key,
                            f"tar member {info.name} at {info.offset_data} ({info.size} bytes), "
                            f"index says {want[1]} ({want[2]} bytes)",
                        )
                    )
    except (OSError, tarfile.TarError) as e:
        found.append(Damage(name, shard, None, f"tar unreadable: {type(e).__name__}: {e}"))
    for member, (key, _, _) in sorted(expected.items()):
        found.append(Damage(name, shard, key, f"tar member {member} missing"))
    return found
