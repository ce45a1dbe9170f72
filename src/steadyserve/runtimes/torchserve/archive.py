"""TorchServe model archives (``.mar``): safe unpacking and ``MAR-INF/MANIFEST.json``.

A ``.mar`` is a zip (or, with ``--archive-format no-archive``, a directory) holding the model's
files and ``MAR-INF/MANIFEST.json``::

    {"runtime": "python", "model": {"modelName": "m", "modelVersion": "1.0",
     "handler": "handler.py", "serializedFile": "model.pt", "modelFile": "model.py",
     "configFile": "model-config.yaml"}, "archiverVersion": "0.12.0", ...}

Unpacking refuses anything that could write outside the target (absolute names, ``..``, symlink
entries), a total uncompressed size over the limit, and corrupt or foreign zips, each with one
clear :class:`ArchiveError`. Archives unpack once into a directory named by their content hash,
so a restart or a second server reuses it. This module has no torch/ts import: the server
process reads manifests without loading model code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import yaml

MANIFEST = "MAR-INF/MANIFEST.json"
#: Largest total uncompressed size of an archive (``--max_archive_bytes``).
DEFAULT_MAX_BYTES = 8 * 1024**3
_CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive is missing, corrupt, unsafe or not a TorchServe archive (one line)."""


@dataclass(frozen=True)
class Manifest:
    """What TorchServe reads from ``MAR-INF/MANIFEST.json`` (plus the raw document)."""

    model_name: str
    model_version: str
    handler: str
    serialized_file: str | None
    model_file: str | None
    config_file: str | None
    extra_files: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def parse_manifest(model_dir: str) -> Manifest:
    path = os.path.join(model_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise ArchiveError(f"not a TorchServe archive: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"unreadable {MANIFEST}: {exc}") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise ArchiveError(f"invalid {MANIFEST}: no 'model' object")
    name = model.get("modelName")
    handler = model.get("handler")
    if not isinstance(name, str) or not name:
        raise ArchiveError(f"invalid {MANIFEST}: model.modelName is missing")
    if not isinstance(handler, str) or not handler:
        raise ArchiveError(f"invalid {MANIFEST}: model.handler is missing")

    def opt(key: str) -> str | None:
        value = model.get(key)
        return value if isinstance(value, str) and value else None

    extra = [os.path.basename(e) for e in (opt("extraFiles") or "").split(",") if e.strip()]
    return Manifest(
        model_name=name,
        model_version=str(model.get("modelVersion") or "1.0"),
        handler=handler,
        serialized_file=opt("serializedFile"),
        model_file=opt("modelFile"),
        config_file=opt("configFile"),
        extra_files=extra,
        raw=raw,
    )


def read_model_config(model_dir: str, manifest: Manifest) -> dict[str, Any]:
    """The archive's ``model-config.yaml`` as a dict (``{}`` when it has none)."""
    if manifest.config_file is None:
        return {}
    path = os.path.join(model_dir, manifest.config_file)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ArchiveError(f"model config {manifest.config_file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ArchiveError(f"model config {manifest.config_file} is not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArchiveError(f"model config {manifest.config_file} must be a mapping")
    return data


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:24]


def _safe_member(info: zipfile.ZipInfo) -> str | None:
    """The member's relative path, or raise for anything unsafe; ``None`` for directories."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"unsafe archive: {name[:200]!r} is a symbolic link")
    if "\x00" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"unsafe archive: {name[:200]!r} is an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise ArchiveError(f"unsafe archive: {name[:200]!r} leaves the archive (..)")
    if name.endswith("/"):
        return None
    return "/".join(p for p in parts if p not in ("", "."))


def extract(archive: str, target: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Unpack ``archive`` into the (new, empty) directory ``target`` safely."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ArchiveError(f"{archive}: not a zip file (corrupt, or not a .mar)") from None
    except OSError as exc:
        raise ArchiveError(f"{archive}: {exc.strerror or exc}") from None
    with zf:
        infos = zf.infolist()
        if MANIFEST not in {i.filename for i in infos}:
            raise ArchiveError(f"{archive}: not a TorchServe archive (no {MANIFEST})")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise ArchiveError(
                f"{archive}: unpacks to {declared} bytes, over the limit of {max_bytes}"
            )
        written = 0
        root = os.path.realpath(target)
        for info in infos:
            rel = _safe_member(info)
            if rel is None or not rel:
                continue
            dest = os.path.realpath(os.path.join(root, rel))
            if os.path.commonpath([root, dest]) != root:
                raise ArchiveError(f"unsafe archive: {info.filename[:200]!r} leaves the archive")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:  # a lying size header (zip bomb)
                            raise ArchiveError(
                                f"{archive}: unpacks to more than the limit of {max_bytes} bytes"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise ArchiveError(
                    f"{archive}: corrupt member {info.filename[:200]!r}: {exc}"
                ) from None


def unpack_dir(cache_root: str | None = None) -> str:
    root = cache_root or os.path.join(tempfile.gettempdir(), f"steadyserve-mar-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    return root


def open_archive(
    path: str, cache_root: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str, Manifest]:
    """The unpacked directory and manifest of a ``.mar`` file or an unpacked archive dir.

    A zip unpacks once into ``<cache>/<sha256 prefix>`` (atomically: into a temporary sibling,
    then renamed), so concurrent servers and restarts reuse it."""
    if os.path.isdir(path):
        return path, parse_manifest(path)
    if not os.path.isfile(path):
        raise ArchiveError(f"{path}: no such archive")
    root = unpack_dir(cache_root)
    dest = os.path.join(root, _digest(path))
    if not os.path.isfile(os.path.join(dest, MANIFEST)):
        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=root)
        try:
            extract(path, tmp, max_bytes)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process won the race: use its copy
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest, parse_manifest(dest)
