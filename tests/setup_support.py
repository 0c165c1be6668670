"""Shared pieces of the setupper/activator/sites tests: a plain-data view and a flow runner."""

from __future__ import annotations

from typing import Any

from plugins import DataPlugin, InputFile
from services.reactors.activator import SentActivations
from services.sitedata.sites import Queue


class FakePlugin(DataPlugin):
    """Inputs live where ``replicas`` says; ``fail`` makes every action raise PluginError."""

    name = "fake"

    def __init__(self, replicas: dict[str, set[str]] | None = None, ready: set[str] | None = None,
                 fail: str | None = None):
        self.replicas = replicas or {}
        self.ready = ready or set()
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def locate(self, files):
        return {f.lfn: set(self.replicas.get(f.lfn, ())) for f in files}

    def dispatch_ready(self, block):
        return block in self.ready

    def outputs_arrived(self, files):
        return []

    def _act(self, op, arg):
        from plugins import PluginError

        if self.fail:
            raise PluginError(self.fail)
        self.calls.append((op, arg))

    def prepare_dispatch(self, block, endpoint, files):
        self._act("prepare_dispatch", (block, endpoint, [f.lfn for f in files]))

    def prepare_outputs(self, blocks):
        self._act("prepare_outputs", [b.name for b in blocks])

    def register_outputs(self, files, endpoint):
        self._act("register_outputs", files)

    def transfer_outputs(self, files):
        self._act("transfer_outputs", files)

    def pump(self):
        self.calls.append(("pump", None))
        return 0


class FakeStore:
    def __init__(self):
        self.records: list = []
        self.completed: list = []

    def record(self, blocks, files, actor):
        self.records.append((blocks, files, actor))

    def complete_dispatch(self, names):
        self.completed.append(list(names))


class FakeView:
    """The setupper's and activator's view on plain data."""

    def __init__(self, queues: list[Queue], plugin: FakePlugin, jobs: dict[int, tuple[dict, list[dict]]] | None = None,
                 assigned: list | None = None):
        self._queues = {q.name: q for q in queues}
        self._plugin = plugin
        self._jobs = jobs or {}
        self._assigned = assigned or []
        self.datasets = FakeStore()
        self.partitions = None
        self.sent = SentActivations()

    def queues(self):
        return self._queues

    def plugin(self, queue, vo):
        return self._plugin

    def plugin_spec(self, queue, vo):
        return "fake"

    def job(self, pid, seq):
        return self._jobs.get(pid)

    # activator side
    def assigned(self, partitions, limit):
        return self._assigned[:limit]

    def dispatch_ready(self, block):
        return self._plugin.dispatch_ready(block)

    def plugins(self):
        return [self._plugin]

    def in_flight(self, since):
        return self.sent.since(since)

    def mark_sent(self, pandaids, at=None):
        self.sent.mark(pandaids, at)


def queue(name: str, **kw) -> Queue:
    kw.setdefault("endpoints", (f"{name}_DISK",))
    return Queue(name=name, site=kw.pop("site", name), version=kw.pop("version", 1), **kw)


def inputs(*lfns: str) -> list[InputFile]:
    return [InputFile(lfn=lfn, dataset="ds.in") for lfn in lfns]
