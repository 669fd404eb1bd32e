"""Removing what nothing needs: blobs no manifest references (Ollama's RemoveLayers and
PruneLayers), empty manifest directories, and the temp files a killed process left behind."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from . import manifest as mf
from .files import TEMP_PREFIX, remove_unlocked

log = logging.getLogger(__name__)

# Ollama's layerPruneGracePeriod: a blob uploaded for a create still in flight (in this server or
# another on the same directory) survives a start-up prune.
PRUNE_GRACE_S = 3600.0
_BLOB = re.compile(r"^sha256-[0-9a-f]{64}$")


def referenced(root: Path) -> tuple[set[str], list[Path]]:
    """(every digest some manifest names, the manifests that could not be read as JSON)."""
    digests: set[str] = set()
    unreadable: list[Path] = []
    for _, path in mf.iter_manifests(root):
        try:
            data = path.read_bytes()
        except OSError:
            unreadable.append(path)
            continue
        found = mf.referenced_digests(data)
        if found is None:
            unreadable.append(path)
        else:
            digests |= found
    return digests, unreadable


def remove_unused(root: Path, candidates: set[str]) -> list[Path]:
    """Removes the candidate blobs that no manifest names any more. A manifest that is not even
    JSON is ignored, as Ollama's deleteUnusedLayers does, so it cannot pin blobs forever. The
    caller holds the store's lock."""
    if not candidates:
        return []
    used, _ = referenced(root)
    removed = []
    for digest in candidates - used:
        path = mf.blob_path(root, digest)
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prune_blobs(root: Path, grace_s: float = PRUNE_GRACE_S) -> list[Path]:
    """Every blob no manifest names and older than the grace period. Skipped while a manifest
    cannot be read (as Ollama's start-up prune): it might name any blob."""
    blobs = root / "blobs"
    if not blobs.is_dir():
        return []
    used, unreadable = referenced(root)
    if unreadable:
        log.warning("not pruning blobs: manifest %s cannot be read; delete or re-create that model",
                    unreadable[0])  # fmt: skip
        return []
    removed, now = [], time.time()
    for entry in os.scandir(blobs):
        if not _BLOB.match(entry.name) or f"sha256:{entry.name[7:]}" in used:
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < grace_s:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    return removed


def remove_empty_dirs(directory: Path) -> None:
    """Ollama's PruneDirectory: empty directories under manifests/ go (the top one stays)."""
    for path in sorted((p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink()),
                       key=lambda p: len(p.parts), reverse=True):  # fmt: skip
        try:
            path.rmdir()
        except OSError:
            pass  # not empty


def _blob_leftover(name: str) -> bool:
    # .partial: a killed create or pull of an older version; .upload-: a killed upload.
    return name.startswith((TEMP_PREFIX, ".upload-")) or name.endswith(".partial")


def _manifest_leftover(name: str) -> bool:
    return not mf.is_manifest_name(name)


def _root_leftover(name: str) -> bool:
    # <name>.gguf.tmp: the default model being linked in by an older version.
    return name.startswith(TEMP_PREFIX) or name.endswith(".gguf.tmp")


def remove_leftovers(root: Path) -> list[Path]:
    """Temp files of writers that died (kill -9, power loss); a live writer's are locked and stay."""
    removed = remove_unlocked(root, _root_leftover) + remove_unlocked(root / "blobs", _blob_leftover)
    manifests = root / "manifests"
    if manifests.is_dir():
        for directory, _, _ in os.walk(manifests):
            removed += remove_unlocked(Path(directory), _manifest_leftover)
    return removed
