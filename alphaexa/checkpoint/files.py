"""The on-disk side of checkpoints: directory names, the manifest, checksums, atomic renames.

Nothing here imports torch, so ``alphaexa generate`` and other tools can find and
check a checkpoint cheaply. Layout of a checkpoint root::

    ROOT/latest                 text file "step_000200", replaced atomically
    ROOT/step_000100/           complete: manifest.json + DCP files
    ROOT/step_000200/
    ROOT/step_000300.tmp/       a save in progress (or one killed mid-way): never used

A ``step_NNNNNN`` directory exists only after every rank finished writing and rank 0
wrote ``manifest.json`` into the ``.tmp`` directory, because the directory is renamed
into place last. A ``step_*`` directory that nevertheless lacks a valid manifest, or whose
files differ from what the manifest lists, is reported and skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"
MANIFEST_FORMAT = "alphaexa-checkpoint"
MANIFEST_VERSION = 1
TMP_SUFFIX = ".tmp"
TRASH_SUFFIX = ".trash"  # a checkpoint being deleted: renamed first so a crash never leaves half of one
_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEFTOVER_DIR = re.compile(r"^step_\d+\.(tmp|trash)$")
_HASH_CHUNK = 8 << 20


class ManifestError(Exception):
    """A checkpoint directory whose manifest is missing, unreadable or inconsistent."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def parse_step_dir(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_N`` directory under ``root`` (complete or not), newest step first."""
    if not root.is_dir():
        return []
    found = [(parse_step_dir(p.name), p) for p in root.iterdir() if p.is_dir()]
    return sorted(((s, p) for s, p in found if s is not None), key=lambda sp: sp[0], reverse=True)


def read_latest_pointer(root: Path) -> str | None:
    try:
        return (root / LATEST_NAME).read_text().strip() or None
    except FileNotFoundError:
        return None


def candidate_dirs(root: Path) -> list[Path]:
    """Checkpoint directories in the order a resume should try them.

    The ``latest`` pointer wins when it names an existing directory: after a resume from
    an older step (a rollback, a branch) a checkpoint with a larger step number may belong
    to the abandoned run. Below it come the older ones, newest first, as fallbacks.
    """
    dirs = step_dirs(root)
    pointed = read_latest_pointer(root)
    pointed_step = parse_step_dir(pointed) if pointed else None
    if pointed_step is not None and any(s == pointed_step for s, _ in dirs):
        return [p for s, p in dirs if s <= pointed_step]
    return [p for _, p in dirs]


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of one file (hashlib releases the GIL, so this overlaps training)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def data_files(directory: Path) -> list[str]:
    """Names of the files a checkpoint consists of (everything except the manifest)."""
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_NAME)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed manifest of a checkpoint directory; ManifestError if missing or malformed."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME}") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{MANIFEST_NAME} unreadable: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{MANIFEST_NAME} is not an {MANIFEST_FORMAT} manifest")
    for key in ("step", "world_size", "files"):
        if key not in manifest:
            raise ManifestError(f"{MANIFEST_NAME} lacks '{key}'")
    expected_step = parse_step_dir(directory.name)
    if expected_step is not None and manifest["step"] != expected_step:
        raise ManifestError(f"{MANIFEST_NAME} says step {manifest['step']}, directory says {expected_step}")
    return manifest


def check_file(directory: Path, name: str, listed: dict[str, Any], checksum: bool) -> str | None:
    """Why the file ``name`` differs from its manifest entry, or None when it matches."""
    path = directory / name
    try:
        size = path.stat().st_size
        if size != listed["size"]:
            return f"file {name}: size {size} != {listed['size']}"
        if checksum and file_digest(path)["sha256"] != listed["sha256"]:
            return f"file {name}: sha256 mismatch"
    except FileNotFoundError:
        return f"file {name}: missing"
    except OSError as e:
        return f"file {name}: {e.strerror or e}"
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers see either the old file or the complete new one."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def publish(root: Path, tmp: Path, step: int, manifest: dict[str, Any], keep_last: int | None) -> Path:
    """Rank 0, once every rank has written into ``tmp``: the manifest, the rename into place,
    ``latest`` repointed, checkpoints beyond the newest ``keep_last`` removed."""
    write_text_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    final = root / step_dir_name(step)
    if final.exists():  # the same step saved again after a rollback: the new one replaces it
        remove_dir(final)
    os.rename(tmp, final)
    fsync_dir(root)
    write_text_atomic(root / LATEST_NAME, final.name + "\n")
    if keep_last is not None:
        older = [p for _, p in step_dirs(root) if p != final and (p / MANIFEST_NAME).is_file()]
        for stale in older[keep_last - 1:]:
            remove_dir(stale)
    return final


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_dir(path: Path) -> None:
    """Delete a checkpoint directory: rename it to ``*.trash`` first so no half-deleted one looks complete."""
    trash = path.with_name(path.name + TRASH_SUFFIX)
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    shutil.rmtree(trash)


def remove_leftovers(root: Path) -> None:
    """Remove ``*.tmp`` and ``*.trash`` directories left behind by a save or delete that was killed."""
    for p in root.iterdir():
        if p.is_dir() and _LEFTOVER_DIR.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from either a checkpoint directory or a checkpoint root.

    Given a root, follows ``latest`` (or the newest ``step_N``) to a directory with a
    manifest; this does not verify checksums (``CheckpointManager.load`` does).
    Raises ManifestError when nothing usable is there.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    for candidate in candidate_dirs(path):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise ManifestError(f"{path} is neither a checkpoint directory nor holds a complete checkpoint")
