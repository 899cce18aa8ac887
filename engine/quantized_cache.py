"""A disk cache of bitsandbytes-quantized checkpoints, so that only the first int8 / nf4 load pays for quantizing.

bitsandbytes quantizes on the CPU slowly (its nf4 quantizer takes minutes for Huginn-0125's 3.5B weights, see
``bench/bench_quantizer.py``). After the first quantized load of a checkpoint, ``engine.load`` saves the quantized
model with transformers' ``save_pretrained`` (which serializes bitsandbytes' int8 and 4-bit weights, quant states
included) into an entry of this cache, and later loads read that entry with ``from_pretrained``.

An entry is keyed by the checkpoint's identity (the resolved folder; name, size, mtime and safetensors header of
each weight file; the config), the format, the compute dtype, the device type, the nf4 block size and the versions
of the libraries that wrote it. It is written into a hidden temporary folder and renamed into place only when
complete, with a marker file listing its files and sizes, so a crash mid-write leaves no entry that can be taken;
an entry whose marker or files do not match is removed and rebuilt.

The cache lives in ``$HUGINN_STUDIO_QUANTIZED_CACHE`` if set (``off`` turns it off), else in the user's cache
folder (``~/.cache/huginn-studio/quantized`` on Linux).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "HUGINN_STUDIO_QUANTIZED_CACHE"
OFF_VALUES = ("off", "0", "false", "no", "none")
MARKER = "huginn-quantized-cache.json"
CACHE_FORMAT = 1  # bump when what an entry holds changes
STALE_PARTIAL_S = 24 * 3600  # a temporary folder this old is left from a crash, whoever wrote it
DISK_MARGIN_BYTES = 1024**3
_COPIED_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
_HEADER_LIMIT = 100 * 1024**2  # safetensors headers are far smaller; a larger one is a hostile or broken file
logger = logging.getLogger(__name__)


def default_cache_dir() -> Path | None:
    """Where entries go by default: ``$HUGINN_STUDIO_QUANTIZED_CACHE`` (None when it says ``off``), else the user's
    cache folder."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in OFF_VALUES:
        return None
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("huginn-studio")) / "quantized"


def resolve_cache(setting: bool | str | os.PathLike | None) -> "QuantizedCache | None":
    """``engine.load``'s ``quantized_cache`` argument: True (or None) for the default folder, False for none, a path
    for that folder."""
    if setting is False:
        return None
    if setting is True or setting is None:
        root = default_cache_dir()
        return None if root is None else QuantizedCache(root)
    return QuantizedCache(Path(setting).expanduser())


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else 0
        return f.read(min(length, _HEADER_LIMIT))


def checkpoint_identity(folder: Path) -> dict[str, Any]:
    """What identifies a checkpoint's contents cheaply. Per safetensors file: its size, modification time, the name
    of the file a link resolves to (a hub snapshot links to blobs named by their hash) and the hash of its header
    (tensor names, dtypes, shapes, offsets). The small JSON files an entry copies (config, generation config, index)
    by their contents, so that an edited config is never answered with the old one."""
    folder = Path(folder).resolve()
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            target = path.resolve()
            stat = target.stat()
            files[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "target": target.name,
                                "header_sha256": hashlib.sha256(_safetensors_header(target)).hexdigest()}
        elif path.name in _COPIED_FILES:
            files[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"folder": str(folder), "files": files}


def _library_versions() -> dict[str, str]:
    import bitsandbytes
    import transformers

    return {"cache_format": str(CACHE_FORMAT), "bitsandbytes": bitsandbytes.__version__,
            "transformers": transformers.__version__, "torch": torch.__version__}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "model"


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: str
    fields: dict[str, Any]  # what the key was computed from, kept in the marker


class QuantizedCache:
    """A folder of quantized checkpoints; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, folder: Path, fmt: str, dtype: torch.dtype, device: str, blocksize: int | None) -> CacheEntry:
        fields = {"checkpoint": checkpoint_identity(folder), "format": fmt, "dtype": str(dtype).replace("torch.", ""),
                  "device": torch.device(device).type, "nf4_blocksize": blocksize if fmt == "nf4" else None,
                  "versions": _library_versions()}
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
        name = f"{_slug(Path(folder).resolve().name)}-{fmt}-{key}"
        return CacheEntry(self.root / name, key, fields)

    def find(self, entry: CacheEntry) -> Path | None:
        """The entry's folder when it is complete and intact; a broken one is removed (and so rebuilt)."""
        if not entry.path.exists():
            return None
        problem = _check_marker(entry)
        if problem is None:
            return entry.path
        logger.warning("ignoring the quantized-weights cache entry %s (%s); it will be rebuilt", entry.path, problem)
        self.discard(entry.path)
        return None

    def discard(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def save(self, model, entry: CacheEntry, nbytes: int) -> str:
        """Save a freshly quantized model as the entry: written into a temporary folder, then renamed into place.
        Returns a sentence for the load message; never raises for disk trouble (the model is loaded either way)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_partials()
            free = shutil.disk_usage(self.root).free
            if free < nbytes + DISK_MARGIN_BYTES:
                return (f"quantized weights not cached: {free / 1e9:.1f} GB free on disk in {self.root}, "
                        f"{(nbytes + DISK_MARGIN_BYTES) / 1e9:.1f} GB needed")
            tmp = self.root / f".partial-{entry.path.name}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                model.save_pretrained(tmp)
                files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
                _write_json_synced(tmp / MARKER, {"key": entry.key, "files": files, "created": time.time(),
                                                  **entry.fields})
                _sync_folder(tmp)
                try:
                    os.rename(tmp, entry.path)
                except OSError:  # the entry exists: another process's complete one, or a broken one (now removed)
                    if self.find(entry) is None:
                        os.rename(tmp, entry.path)
                    else:
                        self.discard(tmp)
            except BaseException:
                self.discard(tmp)
                raise
            self._remove_replaced(entry)
            return f"quantized weights saved to {entry.path}; later loads read them from there"
        except Exception as err:  # noqa: BLE001 - a cache that cannot be written must not fail the load
            return f"quantized weights not cached ({type(err).__name__}: {str(err).splitlines()[0][:200]})"

    def _remove_stale_partials(self) -> None:
        """Temporary folders left by a crashed writer: this host's whose process is gone, or any older than a day."""
        mine = re.compile(rf"-{re.escape(_host())}-(\d+)-[0-9a-f]{{8}}$")
        for path in self.root.glob(".partial-*"):
            try:
                old = time.time() - path.stat().st_mtime > STALE_PARTIAL_S
            except OSError:
                continue
            match = mine.search(path.name)
            if old or (match is not None and not _pid_alive(int(match.group(1)))):
                self.discard(path)

    def _remove_replaced(self, entry: CacheEntry) -> None:
        """Entries of an earlier version of the same checkpoint folder, in the same format, dtype and device."""
        same = ("format", "dtype", "device", "nf4_blocksize")
        for path in self.root.iterdir():
            if path == entry.path or path.name.startswith(".") or not (path / MARKER).is_file():
                continue
            try:
                marker = json.loads((path / MARKER).read_text())
            except (OSError, ValueError):
                continue
            if (isinstance(marker, dict) and marker.get("checkpoint", {}).get("folder")
                    == entry.fields["checkpoint"]["folder"] and all(marker.get(k) == entry.fields[k] for k in same)):
                logger.info("removing %s: the checkpoint it was made from has changed", path)
                self.discard(path)


def _check_marker(entry: CacheEntry) -> str | None:
    try:
        marker = json.loads((entry.path / MARKER).read_text())
    except FileNotFoundError:
        return "it has no completion marker"
    except (OSError, ValueError) as err:
        return f"unreadable marker: {err}"
    if not isinstance(marker, dict) or marker.get("key") != entry.key or not isinstance(marker.get("files"), dict):
        return "its marker does not match"
    for name, size in marker["files"].items():
        path = entry.path / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
    return None


def _write_json_synced(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _sync_folder(folder: Path) -> None:
    """Flush the folder's files to disk before it is renamed into place, so a power loss cannot leave a complete-
    looking entry with missing data."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    return _slug(socket.gethostname())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
