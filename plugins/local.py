"""The ``local`` data plugin: a grid on one disk, so the whole job flow runs with nothing installed.

Layout under ``[plugins] local_root`` (default ``<state dir>/storage``)::

    <endpoint>/                    a storage endpoint (DDM endpoint / RSE), e.g. LOCAL_DATADISK
    <endpoint>/<block>/<lfn>       a replica: every block (dataset) is a folder, every replica a file
    .pandaes/blocks/<block>.json   what a block is (kind, endpoint, parent)
    .pandaes/blocks/<block>.files.jsonl   its files, appended as they are registered
    .pandaes/transfers/*.json      transfer requests with the time they become due
    .pandaes/catalogue.jsonl       the file catalogue: one JSON line per block creation, dispatch,
                                   registration and transfer

A file can be in several folders of one endpoint (its dataset's and a dispatch or sub block's):
those are hard links (copies where links are impossible). "Transfer" copies between endpoints after
``local_transfer_delay`` seconds; the copy itself happens in ``pump`` (called by the activator's and
finisher's loops), so requests survive restarts and any process may carry them out. Copies land
under a temporary name and are renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from core.config import Config
from plugins.base import DataPlugin, InputFile, OutputBlock, OutputFile, PluginError

_STALE_CLAIM = 60.0   # a claimed transfer request untouched this long was abandoned by a dead process


def _check_name(kind: str, name: str | None) -> str:
    if not name or "/" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise PluginError(f"{kind} {name!r} cannot be used as a file or folder name")
    return name


class LocalPlugin(DataPlugin):
    name = "local"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        root = cfg.plugins.local_root
        self.root = (Path(root).expanduser() if root else cfg.state_dir / "storage").resolve()
        self.delay = float(cfg.plugins.local_transfer_delay)
        self.strict = bool(cfg.plugins.local_strict_outputs)
        self.meta = self.root / ".pandaes"
        for d in (self.meta / "blocks", self.meta / "transfers"):
            d.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------------------------- paths
    def endpoint_dir(self, endpoint: str) -> Path:
        return self.root / _check_name("endpoint", endpoint)

    def replica(self, endpoint: str, block: str, lfn: str) -> Path:
        """Where a replica of ``lfn`` in ``block`` lives at ``endpoint``."""
        return self.endpoint_dir(endpoint) / _check_name("block", block) / _check_name("lfn", lfn)

    def endpoints(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _find(self, endpoint: str, lfn: str, dataset: str | None) -> Path | None:
        """A replica of ``lfn`` at ``endpoint``: in its dataset's folder or loose; only a file without a
        dataset is searched in every folder (that scan grows with the number of blocks)."""
        base = self.endpoint_dir(endpoint)
        if dataset:
            path = base / _check_name("dataset", dataset) / lfn
            if path.is_file():
                return path
        loose = base / lfn
        if loose.is_file():
            return loose
        if dataset:
            return None
        return next((p for p in sorted(base.glob(f"*/{lfn}")) if p.is_file()), None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.meta / "lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _catalogue(self, entries: Sequence[dict]) -> None:
        now = time.time()
        lines = "".join(json.dumps({"time": now, **e}, sort_keys=True) + "\n" for e in entries)
        with self._locked(), open(self.meta / "catalogue.jsonl", "a") as fh:
            fh.write(lines)

    def catalogue(self) -> list[dict]:
        """Every catalogue entry, oldest first (for tests and tools)."""
        path = self.meta / "catalogue.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _manifest_path(self, block: str) -> Path:
        return self.meta / "blocks" / f"{_check_name('block', block)}.json"

    def _files_path(self, block: str) -> Path:
        return self.meta / "blocks" / f"{_check_name('block', block)}.files.jsonl"

    def _header(self, block: str) -> dict | None:
        path = self._manifest_path(block)
        return json.loads(path.read_text()) if path.exists() else None

    def manifest(self, block: str) -> dict | None:
        """What a block is (name, kind, endpoint, parent) and its files, folded from its file log."""
        current = self._header(block)
        if current is None:
            return None
        files: dict[str, dict] = current.setdefault("files", {})
        path = self._files_path(block)
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    files.setdefault(entry.pop("lfn"), {}).update(entry)
        return current

    def _update_manifest(self, block: str, kind: str, endpoint: str, files: dict[str, dict],
                         parent: str | None = None) -> None:
        """Create the block's header if it is new (or add an endpoint to a destination) and APPEND the files.

        Why a header plus an append-only file log: a task's outputs all go to one dataset, and rewriting one
        JSON document per registered file made the n-th registration cost O(n) (a dataset of 2,000 files was
        8x slower per file than one of 500). The header changes only when the block itself does."""
        with self._locked():
            current = self._header(block)
            changed = current is None
            if current is None:
                current = {"name": block, "kind": kind, "endpoint": endpoint, "parent": parent}
            if kind == "destination":    # a final dataset may have replicas at several endpoints
                endpoints = sorted({*current.get("endpoints", [current["endpoint"]]), endpoint})
                changed = changed or endpoints != current.get("endpoints")
                current["endpoints"] = endpoints
            elif current["endpoint"] != endpoint:
                raise PluginError(f"{kind} block {block} is at {current['endpoint']}, not {endpoint}")
            if changed:
                path = self._manifest_path(block)
                tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
                tmp.write_text(json.dumps(current, sort_keys=True))
                os.replace(tmp, path)
            if files:
                lines = "".join(json.dumps({"lfn": lfn, **info}, sort_keys=True) + "\n" for lfn, info in files.items())
                with open(self._files_path(block), "a") as fh:
                    fh.write(lines)

    @staticmethod
    def _place(src: Path, dst: Path) -> None:
        """Make ``dst`` a replica of ``src`` (hard link, else copy), atomically; existing dst is kept."""
        if dst.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.part")
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

    def _request(self, copies: list[tuple[Path, Path]], what: dict) -> None:
        """Copy now (delay 0) or leave a request that ``pump`` carries out when due."""
        if not copies:
            return
        if self.delay <= 0:
            for src, dst in copies:
                self._place(src, dst)
            return
        request = {"due": time.time() + self.delay, "copies": [[str(s), str(d)] for s, d in copies], **what}
        path = self.meta / "transfers" / f"{time.time():.6f}-{uuid.uuid4().hex}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(request))
        os.replace(tmp, path)

    # -------------------------------------------------------------------------------------- queries
    def locate(self, files: Sequence[InputFile]) -> dict[str, set[str]]:
        endpoints = self.endpoints()
        return {f.lfn: {ep for ep in endpoints if self._find(ep, _check_name("lfn", f.lfn), f.dataset)}
                for f in files}

    def missing_inputs(self, endpoint: str, files: Sequence[InputFile]) -> list[str]:
        if not self.endpoint_dir(endpoint).is_dir():
            return [f.lfn for f in files]
        return [f.lfn for f in files if self._find(endpoint, _check_name("lfn", f.lfn), f.dataset) is None]

    def dispatch_ready(self, block: str) -> bool:
        info = self.manifest(block)
        if info is None:
            return False
        return all(self.replica(info["endpoint"], block, lfn).is_file() for lfn in info["files"])

    def outputs_arrived(self, files: Sequence[OutputFile]) -> list[str]:
        return [f.lfn for f in files if self.replica(f.destination, f.dataset, f.lfn).is_file()]

    # -------------------------------------------------------------------------------------- actions
    def prepare_dispatch(self, block: str, endpoint: str, files: Sequence[InputFile]) -> None:
        self.endpoint_dir(endpoint).mkdir(parents=True, exist_ok=True)
        where = self.locate(files)
        copies: list[tuple[Path, Path]] = []
        for f in files:
            here = self._find(endpoint, f.lfn, f.dataset)
            dst = self.replica(endpoint, block, f.lfn)
            if here is not None:
                self._place(here, dst)
                continue
            sources = sorted(where.get(f.lfn, ()))
            if not sources:
                raise PluginError(f"input {f.lfn} ({f.dataset or 'no dataset'}) is at no endpoint under {self.root}")
            src = self._find(sources[0], f.lfn, f.dataset)
            assert src is not None
            if f.dataset:
                copies.append((src, self.replica(endpoint, f.dataset, f.lfn)))
            copies.append((src, dst))
        self._update_manifest(block, "dispatch", endpoint,
                              {f.lfn: {"dataset": f.dataset, "guid": f.guid} for f in files})
        self._request(copies, {"block": block, "kind": "dispatch"})
        self._catalogue([{"op": "dispatch", "block": block, "endpoint": endpoint,
                          "lfns": [f.lfn for f in files], "moving": len(copies), "delay": self.delay}])

    def prepare_outputs(self, blocks: Sequence[OutputBlock]) -> None:
        for b in blocks:
            (self.endpoint_dir(b.endpoint) / _check_name("block", b.name)).mkdir(parents=True, exist_ok=True)
        fresh = [b for b in blocks if not self._manifest_path(b.name).exists()]   # existing ones stay as they are
        for b in fresh:
            self._update_manifest(b.name, b.kind, b.endpoint, {}, parent=b.parent)
        if fresh:
            self._catalogue([{"op": "create", "block": b.name, "kind": b.kind, "endpoint": b.endpoint,
                              "parent": b.parent} for b in fresh])

    def register_outputs(self, files: Sequence[OutputFile], endpoint: str) -> None:
        entries = []
        subs: dict[tuple[str, str], dict[str, dict]] = {}
        dests: dict[tuple[str, str], dict[str, dict]] = {}
        for f in files:
            produced = self._produced(f, endpoint)
            final = self.replica(endpoint, f.dataset, f.lfn)
            if produced is None:
                if self.strict:
                    raise PluginError(f"output {f.lfn} was not found at {endpoint} ({self.endpoint_dir(endpoint)})")
                if not final.exists():   # a simulated job wrote nothing: keep a stub so the flow goes on
                    final.parent.mkdir(parents=True, exist_ok=True)
                    final.write_text(json.dumps({"stub": True, "lfn": f.lfn, "guid": f.guid,
                                                 "fsize": f.fsize, "checksum": f.checksum}) + "\n")
                produced = final
            elif self.strict and f.fsize is not None and produced.stat().st_size != f.fsize:
                raise PluginError(f"output {f.lfn}: {produced.stat().st_size} bytes on disk, pilot said {f.fsize}")
            self._place(produced, final)
            self._place(produced, self.replica(endpoint, f.block, f.lfn))
            info = {"guid": f.guid, "fsize": f.fsize, "checksum": f.checksum, "scope": f.scope,
                    "pandaid": f.pandaid, "type": f.type}
            subs.setdefault((f.block, f.dataset), {})[f.lfn] = info
            dests.setdefault((f.dataset, f.destination), {})[f.lfn] = {**info, "sub": f.block}
            entries.append({"op": "register", "lfn": f.lfn, "block": f.block, "dataset": f.dataset,
                            "endpoint": endpoint, **info})
        for (block, dataset), found in subs.items():       # one append per block, not one rewrite per file
            self._update_manifest(block, "sub", endpoint, found, parent=dataset)
        for (dataset, destination), found in dests.items():
            self._update_manifest(dataset, "destination", destination, found)
        if entries:
            self._catalogue(entries)

    def _produced(self, f: OutputFile, endpoint: str) -> Path | None:
        candidates = []
        if f.surl:
            surl = f.surl.removeprefix("file://")
            if surl.startswith("/"):
                candidates.append(Path(surl))
        base = self.endpoint_dir(endpoint)
        candidates += [base / f.block / f.lfn, base / f.dataset / f.lfn, base / f.lfn]
        return next((p for p in candidates if p.is_file()), None)

    def transfer_outputs(self, files: Sequence[OutputFile]) -> None:
        copies, entries = [], []
        for f in files:
            dst = self.replica(f.destination, f.dataset, f.lfn)
            if dst.is_file():
                continue
            src = next((p for ep in self.endpoints() if ep != f.destination
                        for p in [self._find(ep, f.lfn, f.dataset)] if p is not None), None)
            if src is None:
                raise PluginError(f"output {f.lfn} is registered nowhere; cannot move it to {f.destination}")
            copies.append((src, dst))
            entries.append({"op": "transfer", "lfn": f.lfn, "dataset": f.dataset, "to": f.destination,
                            "delay": self.delay})
        self._request(copies, {"kind": "output"})
        if entries:
            self._catalogue(entries)

    def pump(self) -> int:
        moved, now = 0, time.time()
        for path in sorted((self.meta / "transfers").glob("*.json*")):
            name = path.name
            if ".claimed." in name:
                try:
                    if now - path.stat().st_mtime < _STALE_CLAIM:
                        continue
                except FileNotFoundError:
                    continue
            try:
                request = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if request["due"] > now:
                continue
            claimed = path.with_name(f"{name.split('.claimed.')[0]}.claimed.{os.getpid()}.{uuid.uuid4().hex[:6]}")
            try:
                os.rename(path, claimed)          # atomic: only one process wins the request
            except FileNotFoundError:
                continue
            for src, dst in request["copies"]:
                if not Path(src).is_file():
                    raise PluginError(f"transfer source {src} vanished", temporary=True)
                self._place(Path(src), Path(dst))
                moved += 1
            claimed.unlink(missing_ok=True)
        return moved

    def describe(self) -> dict:
        return {"plugin": self.name, "root": str(self.root), "transfer_delay": self.delay}
