"""Models on disk: names (name:tag) -> GGUF files in OLLAMA_MODELS, described without loading
weights. A damaged entry is set aside with its reason; it never breaks a listing."""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..gguf_model import GGUFError
from ..interface import EngineError, InvalidRequest, ModelInfo, ModelNotFound
from ..text.chat_template import _is_go_template
from . import manifest as mf
from . import prune as pr
from .describe import capabilities, describe
from .files import exclusive
from .manifest import Manifest, ManifestError, parse_name

log = logging.getLogger(__name__)

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<idx>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)


class DamagedModel(EngineError):
    """A model on disk that cannot be used (a manifest that does not parse, a missing blob, a
    GGUF that is not one); the message names the model and what is wrong."""


def canonical_name(name: str) -> str:
    """`Foo`, `foo:latest`, `library/foo:latest`, `registry.ollama.ai/library/foo:latest` -> `foo:latest`."""
    return parse_name(name).display()


# A file's identity: a rewrite (new inode), an append or a touch all change it.
Identity = tuple[int, int, int, int]


def identity(path: Path) -> Identity | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class _Entry:
    """Where a model comes from: an Ollama manifest, or a loose GGUF (or split set)."""

    paths: tuple[Path, ...] = ()  # a loose file and its split parts
    manifest_path: Path | None = None
    ref: mf.ModelRef | None = None


class ModelStore:
    """Ollama's layout under `root` (manifests/ + blobs/) plus loose `*.gguf` files in `root`
    itself, listed as `<stem>:latest`. Manifests win when both give the same name.

    Opening a store cleans up after a killed process (temp files nobody is writing) and, unless
    `prune` is off (OLLAMA_NOPRUNE), removes blobs no manifest has used for an hour. Parsed
    manifests and GGUF headers are cached by file identity, failures included, so a listing
    reads only what changed."""

    def __init__(self, root: str | os.PathLike, prune: bool = True):
        self.root = Path(root).expanduser()
        self.prune = prune
        self._manifests: dict[tuple, Manifest | str] = {}  # (path, identity) -> parsed, or what is wrong
        self._described: dict[tuple, ModelInfo | str] = {}  # GGUF identities -> header info, or what is wrong
        self._infos: dict[tuple, ModelInfo | str] = {}  # (name, identities) -> what /api/show serves
        if self.root.is_dir():
            self._start_up()

    def changing(self) -> AbstractContextManager[None]:
        """The lock every change to manifests or blobs holds (create, copy, pull, delete, prune)."""
        return exclusive(self.root)

    def _start_up(self) -> None:
        try:
            with self.changing():
                from .pypi_models import remove_interrupted

                removed = pr.remove_leftovers(self.root) + remove_interrupted()
                if self.prune:
                    removed += pr.prune_blobs(self.root)
                    pr.remove_empty_dirs(self.root / "manifests")
        except OSError as e:  # a read-only store still lists
            log.warning("store %s: start-up cleanup skipped: %s", self.root, e)
            return
        for path in removed:
            log.info("removed unused %s", path)

    # ---- what is there -------------------------------------------------------------------

    def _scan(self) -> dict[str, _Entry]:
        found: dict[str, _Entry] = {}
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*.gguf")):
            m = _SPLIT.match(path.name)
            if m and m["idx"] != "00001":
                continue  # later parts of a split set travel with the first
            try:
                name = canonical_name(m["stem"] if m else path.stem)
            except InvalidRequest:
                continue  # a file name that is no valid model name is not a model
            parts = (path,)
            if m:
                n = int(m["n"])
                parts = tuple(path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1))
            found[name] = _Entry(paths=parts)
        newest: dict[str, int] = {}
        for ref, path in mf.iter_manifests(self.root):
            # Spellings of one name in several cases (an older version wrote them): the newest wins.
            name, mtime = ref.display(), (identity(path) or (0, 0, 0, 0))[3]
            if name not in newest or mtime > newest[name]:
                newest[name] = mtime
                found[name] = _Entry(manifest_path=path, ref=ref)
        return found

    def _manifest(self, entry: _Entry) -> Manifest:
        path = entry.manifest_path
        key = (path, identity(path))
        parsed = self._manifests.get(key)
        if parsed is None:
            try:
                parsed = mf.read_manifest(self.root, entry.ref, path)
            except (OSError, ManifestError) as e:
                parsed = str(e)
            self._manifests[key] = parsed
        if isinstance(parsed, str):
            raise ManifestError(parsed)
        return parsed

    def _info(self, name: str, entry: _Entry) -> ModelInfo | str:
        """The model's info, or one line saying why it cannot be used."""
        manifest = None
        if entry.manifest_path is not None:
            try:
                manifest = self._manifest(entry)
            except ManifestError as e:
                return self._remember((name, entry.manifest_path, str(e)), name, str(e))
            model = manifest.layer(mf.MEDIA_MODEL)
            if model is None:
                return self._remember((name, manifest.digest, "no model"), name, "manifest has no model layer")
            paths = (mf.blob_path(self.root, model["digest"]),)
            layers = [(layer["mediaType"], mf.blob_path(self.root, layer["digest"])) for layer in manifest.layers]
        else:
            paths = entry.paths
            layers = [(mf.MEDIA_MODEL, p) for p in paths]
        ids = tuple(identity(p) for p in paths)
        key = (name, manifest.digest if manifest else None, tuple(identity(p) for _, p in layers))
        info = self._infos.get(key)
        if info is not None:
            return info
        missing = [(kind, p) for kind, p in layers if identity(p) is None]
        if missing:
            kind, path = missing[0]
            what = "model" if kind == mf.MEDIA_MODEL else kind.rsplit(".", 1)[-1]
            return self._remember(key, name, f"the {what} file {path.name} is missing")
        described = self._described.get(ids)
        if described is None:
            try:
                described = describe(paths, name)
            except (GGUFError, OSError, ValueError) as e:
                described = str(e)
            except Exception as e:  # a reader bug on one odd file must not hide every other model
                described = f"{paths[0].name}: unreadable GGUF ({type(e).__name__}: {e})"
            self._described[ids] = described
        if isinstance(described, str):
            return self._remember(key, name, described)
        try:
            info = replace(described, name=name)
            if manifest is not None:
                info = self._with_manifest(info, manifest)
        except OSError as e:
            return self._remember(key, name, f"a layer cannot be read ({e})")
        self._infos[key] = info
        return info

    def _remember(self, key: tuple, name: str, problem: str) -> str:
        if self._infos.get(key) != problem:
            log.warning("model %s is damaged and not listed: %s", name, problem)
            self._infos[key] = problem
        return problem

    def _with_manifest(self, info: ModelInfo, manifest: Manifest) -> ModelInfo:
        params = _json_layer(self.root, manifest, mf.MEDIA_PARAMS)
        messages = _json_layer(self.root, manifest, mf.MEDIA_MESSAGES)
        template = mf.read_text_layer(self.root, manifest, mf.MEDIA_TEMPLATE)
        # A Jinja template from the Modelfile is the one that renders, so it decides whether the
        # model takes tools or thinks; a Go one cannot run here and the GGUF's still decides.
        usable = bool(template) and not _is_go_template(template)
        return replace(
            info,
            size=manifest.size(),
            digest=manifest.digest,
            modified_at=manifest.mtime,
            # A Go template (every model Ollama itself pulled has one) is shown by /api/show;
            # the chat template loader falls back to the GGUF's Jinja one for rendering.
            template=template or info.template,
            capabilities=capabilities(info.architecture, template) if usable else info.capabilities,
            system=mf.read_text_layer(self.root, manifest, mf.MEDIA_SYSTEM),
            parameters=params if isinstance(params, dict) else {},
            license=mf.read_text_layer(self.root, manifest, mf.MEDIA_LICENSE) or info.license,
            messages=tuple(m for m in messages if isinstance(m, dict)) if isinstance(messages, list) else (),
        )

    def list(self) -> list[ModelInfo]:
        """Every usable model, newest first; damaged ones are logged once and left out."""
        entries = self._scan()
        infos = [self._info(n, e) for n, e in entries.items()]
        # Files that changed leave stale keys behind: past a bound, start the caches afresh.
        for cache in (self._manifests, self._described, self._infos):
            if len(cache) > 2 * len(entries) + 64:
                cache.clear()
        return sorted((i for i in infos if isinstance(i, ModelInfo)), key=lambda i: i.modified_at, reverse=True)

    def _entry(self, name: str) -> tuple[str, _Entry]:
        try:
            key = canonical_name(name)
        except InvalidRequest:
            raise ModelNotFound(f"model '{name}' not found") from None
        entry = self._scan().get(key)
        if entry is None:
            raise ModelNotFound(f"model '{name}' not found")
        return key, entry

    def entry_name(self, name: str) -> str:
        """The canonical name of a model on disk, usable or not. Raises ModelNotFound."""
        return self._entry(name)[0]

    def resolve(self, name: str) -> ModelInfo:
        """The model's info. ModelNotFound, or DamagedModel saying what is wrong with it."""
        key, entry = self._entry(name)
        info = self._info(key, entry)
        if isinstance(info, str):  # damaged, or deleted (and maybe re-created) since the scan: look again
            entry = self._scan().get(key)
            if entry is None:
                raise ModelNotFound(f"model '{name}' not found")
            info = self._info(key, entry)
            if isinstance(info, str):
                raise DamagedModel(f"model '{name}' is damaged: {info}")
        return info

    def manifest_of(self, name: str) -> Manifest | None:
        """The manifest a name lists from, or None for a loose GGUF."""
        entry = self._scan().get(canonical_name(name))
        return self._manifest(entry) if entry is not None and entry.manifest_path is not None else None

    # ---- changes -------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Removes the manifest (in every spelling of the name) and the blobs no other manifest
        uses, or the loose file(s). Works for a damaged model too."""
        ref = parse_name(name)
        with self.changing():
            paths = mf.existing_manifests(self.root, ref)
            if paths:
                candidates = mf.digests_named_by(paths)
                for path in paths:
                    path.unlink(missing_ok=True)
                pr.remove_empty_dirs(self.root / "manifests")
                pr.remove_unused(self.root, candidates)
                return
            entry = self._scan().get(ref.display())
            if entry is None:
                raise ModelNotFound(f"model '{name}' not found")
            for path in entry.paths:
                path.unlink(missing_ok=True)


def _json_layer(root: Path, manifest: Manifest, media_type: str) -> Any:
    """A params or messages layer; a damaged one counts as absent rather than hiding the model."""
    text = mf.read_text_layer(root, manifest, media_type)
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None
