"""Data files are checked when used, not trusted: a download's files against the digests its source
promises (metarec/data/download.py's DEFAULT_SOURCES), a derived cache (Omniglot's decoded images)
against a stamp (size + SHA-256) written atomically next to it; the files a data set was read from are
named by their bytes (fingerprint), which a checkpoint records. What fails is named in one warning
line and fetched or built again by the caller; a file the user keeps in data.root is only compared
with the release, and used as it is (a user may edit a copy on purpose: the warning says it differs).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(files: list[Path]) -> str:
    """SHA-256 (hex) over the files' names and bytes, in name order: where they live does not count."""
    digest = hashlib.sha256()
    for path in sorted((Path(f) for f in files), key=lambda p: (p.name, str(p))):
        digest.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def differing(folder: Path, digests: dict[str, str], lines: dict[str, int] | None = None) -> list[str]:
    """The files in `folder` named in `digests` (name -> SHA-256) or `lines` (name -> line count)
    whose content differs; files not named are not checked."""
    bad = [name for name, digest in digests.items() if (folder / name).is_file() and sha256(folder / name) != digest]
    return bad + [name for name, n in (lines or {}).items()
                  if (folder / name).is_file() and name not in bad and _count_lines(folder / name) != n]


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_stamp(path: Path) -> None:
    """The stamp of a derived cache file, written after it (atomically: temp file, then rename)."""
    stamp, tmp = stamp_path(path), path.with_name(f".{path.name}.sha256.tmp")
    tmp.write_text(json.dumps(record(path)) + "\n")
    tmp.replace(stamp)


def stamp_ok(path: Path) -> bool:
    """True when `path` has a stamp and matches it (size first, then the hash)."""
    try:
        rec = json.loads(stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and not _differs(path, rec)


def _differs(path: Path, rec: dict) -> bool:
    return path.stat().st_size != rec.get("size") or sha256(path) != rec.get("sha256")


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
