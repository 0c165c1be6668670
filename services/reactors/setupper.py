"""Setupper: prepare the data of every newly defined job, then assign, activate or fail it.

PanDA's Setupper (``dataservice/setupper.py`` + VO plugin) runs after storeJobs / reassignJobs. Here it
reacts to ``submitted`` events into ``defined`` and to ``reset`` events back to ``defined``:

1. **brokerage** (services/sitedata/brokerage.py) when the job has no queue, or names a cloud instead of one;
2. **data plan**, decided purely from the event and read-only plugin queries: inputs not at the
   queue's endpoint go into a dispatch block ``panda.dis.<set>.<queue>`` (one per job set), outputs and
   logs go into their destination block and a sub block ``<destination>_subNNNNNN`` (NNNNNN = the job
   set: jobsetID, else jobDefinitionID, else PandaID);
3. the command: ``assign`` (inputs must move; files get dispatchDBlock and status ``pending``),
   ``activate`` (everything is there; inputs ``ready``), or ``fail`` with brokerageErrorCode when no
   queue fits.

The plugin calls that create blocks and start transfers, and the ``datasets`` rows, are one
``Action`` run by the loop before the command is sent (never during replay). If the plugin raises
``PluginError`` the job fails instead, with ddmErrorCode 100 (EC_Setupper) and the plugin's message.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from core import db
from core.config import Config
from core.states import JobStatus
from plugins import DataPlugin, InputFile, OutputBlock, PluginError, for_queue, spec_for
from projections import service_queries
from projections.jobview import JobReader, ProjectionLag
from schemas.jobspec import FileSpec
from schemas.messages import Command, Event, JobSubmitted, Transition
from services.loop import Action, Member, Output, run_alone
from services.reactors.datasets import Block, BlockFile, DatasetStore
from services.sitedata import brokerage, configurator
from services.sitedata.sites import Queue, SitesCache

log = logging.getLogger(__name__)

NAME = "setupper"
ACTOR = f"service:{NAME}"
EC_SETUPPER = 100          # ddmErrorCode (dataservice/ErrorCode.py EC_Setupper)
_SUB = re.compile(r"_sub\d+$")
_NULLS = (None, "", "NULL")


def file_guid(panda_id: int, lfn: str) -> str:
    """The GUID PanDA's setupper gives an output or log file that has none: the generic pilot reports
    outputs with an empty guid and the log with the job's logGUID. Derived from (PandaID, lfn), so a
    decision taken twice gives the same answer."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pandaes:{panda_id}:{lfn}"))


class SetupperView(Protocol):
    """What the setupper may read. Plugins are handed out for their queries; actions go in Actions."""

    def queues(self) -> dict[str, Queue]: ...

    def plugin(self, queue: Queue, vo: str | None) -> DataPlugin: ...

    def plugin_spec(self, queue: Queue, vo: str | None) -> str: ...

    def job(self, panda_id: int, seq: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The job's spec and files once the projection has applied event ``seq`` (None if it never does)."""

    @property
    def datasets(self) -> DatasetStore: ...

    def stale_defined(self, partitions: set[int] | None, before: float, limit: int) -> list[tuple[int, int]]:
        """(PandaID, seq) of jobs ``defined`` since before ``before`` (epoch), oldest first (the sweep)."""
        ...

    def swept_since(self, since: float) -> set[int]:
        """Jobs the sweep acted on at or after ``since`` (memory of the view, not of the decision)."""
        ...

    def mark_swept(self, pandaids: Sequence[int], at: float) -> None: ...


@dataclass(frozen=True)
class Setup:
    """One job's setup as decided: plugin calls (built, not run), its datasets rows, then its command."""

    pid: int
    label: str
    command: Transition
    steps: tuple[Callable[[], Any], ...] = ()
    blocks: tuple[Block, ...] = ()
    files: tuple[BlockFile, ...] = ()


def _val(value: Any) -> Any:
    return None if value in _NULLS else value


def job_set_key(spec: dict[str, Any], panda_id: int) -> int:
    """The number that groups jobs into one dispatch block and one sub block per destination."""
    for attr in ("jobsetID", "jobDefinitionID"):
        value = _val(spec.get(attr))
        if isinstance(value, int) and value > 0:
            return value
    return panda_id


def _fail(panda_id: int, attrs: dict[str, Any], reason: str) -> Transition:
    return Transition(PandaID=panda_id, action="fail", actor=ACTOR, attrs=attrs, reason=reason)


class Setupper:
    """``decide`` reacts to each job entering ``defined``; ``tick`` sweeps the ``defined`` jobs no event
    decision reached (a restore moved the group to the end of the log, a crash between commit and send):
    those older than ``sweep_after`` seconds, not swept in that long, are decided again from the jobs
    projection. Both paths are idempotent: the blocks are recorded with ON CONFLICT, the plugin calls are
    repeatable, and the ledger rejects a transition the job has already made."""

    name = NAME

    def __init__(self, sweep_after: float = 60.0, sweep_batch: int = 500):
        self.sweep_after = sweep_after
        self.sweep_batch = sweep_batch

    def wants(self, event: Event) -> bool:
        if event.to_state != JobStatus.DEFINED:
            return False
        return isinstance(event, JobSubmitted) or getattr(event, "action", None) == "reset"

    # ---------------------------------------------------------------------------------- decision
    def decide(self, event: Event, view: SetupperView) -> Sequence[Output]:
        plan = self._plan_event(event, view)
        return [] if plan is None else self._outputs([plan], view)

    def decide_batch(self, events: Sequence[Event], view: SetupperView) -> Sequence[Output]:
        """Every job of a poll: the plugin calls job by job, then the datasets rows of all of them in one
        transaction, then the commands (``_setup_all``)."""
        plans = [plan for plan in (self._plan_event(e, view) for e in events) if plan is not None]
        return self._outputs(plans, view)

    def _plan_event(self, event: Event, view: SetupperView) -> Command | Setup | None:
        pid = event.PandaID
        if isinstance(event, JobSubmitted):
            spec = {k: v for k, v in _builtins(event.job).items() if k != "Files"}
            files = [_builtins(f) for f in event.job.Files]
        else:
            found = view.job(pid, event.seq)
            if found is None:
                log.warning("setupper: job %d was reset but is not in the jobs projection; skipped", pid)
                return None
            spec, files = found
            spec = {**spec, **event.attrs}
        return self._plan(pid, spec, files, view, event.correlation_id)

    def _outputs(self, plans: Sequence[Command | Setup], view: SetupperView) -> list[Output]:
        """The outputs of planned jobs: commands as they are; one job's setup as one Action (its plugin
        calls, its rows, then its command); several jobs' setups as one Action for all of them."""
        out: list[Output] = [p for p in plans if not isinstance(p, Setup)]
        setups = [p for p in plans if isinstance(p, Setup)]
        if len(setups) == 1:
            s = setups[0]
            steps = list(s.steps)
            if s.blocks or s.files:
                steps.append(functools.partial(view.datasets.record, list(s.blocks), list(s.files), ACTOR))
            if not steps:
                return [*out, s.command]
            out.append(Action(label=s.label, steps=tuple(steps), then=(s.command,),
                              on_error=functools.partial(self._on_error, s.pid)))
        elif setups:
            out.append(Action(label=f"setup {len(setups)} jobs", steps=(functools.partial(
                self._setup_all, setups, view),), then=list))
        return out

    def _setup_all(self, setups: Sequence[Setup], view: SetupperView) -> list[Command]:
        """The side effects of several jobs' setups (an Action's step): each job's plugin calls (a job whose
        plugin refuses fails, ddm 100), then the datasets rows of the others in one transaction; their commands."""
        commands: list[Command] = []
        blocks: dict[str, Block] = {}
        files: dict[tuple[str, int, str], BlockFile] = {}
        for s in setups:
            try:
                for step in s.steps:
                    step()
            except PluginError as exc:
                commands.append(self._ddm_failure(s.pid, exc))
                continue
            commands.append(s.command)
            for b in s.blocks:
                blocks.setdefault(b.name, b)
            for f in s.files:
                files.setdefault((f.dataset, f.pandaid, f.lfn), f)
        if blocks or files:
            view.datasets.record(list(blocks.values()), list(files.values()), ACTOR)
        return commands

    def tick(self, now: float, view: SetupperView) -> Sequence[Output]:
        """The sweep: decide again every ``defined`` job of our partitions older than ``sweep_after``."""
        partitions = getattr(view, "partitions", None)
        if partitions is not None and not partitions:
            return []                     # owns no partition (yet): another copy sweeps
        recent = view.swept_since(now - self.sweep_after)
        stale = [(pid, seq) for pid, seq in view.stale_defined(partitions, now - self.sweep_after, self.sweep_batch)
                 if pid not in recent]
        if not stale:
            return []
        log.info("setupper sweep: %d job(s) still defined after %.0fs", len(stale), self.sweep_after)
        out: list[Output] = [Action(label=f"sweep {len(stale)} defined job(s)",
                                    steps=(functools.partial(view.mark_swept, [pid for pid, _ in stale], now),))]
        plans: list[Command | Setup] = []
        for pid, seq in stale:
            found = view.job(pid, seq)
            if found is None:
                continue                  # moved on meanwhile
            spec, files = found
            plans.append(self._plan(pid, spec, files, view, None))
        return out + self._outputs(plans, view)

    def _plan(self, pid: int, spec: dict[str, Any], files: list[dict[str, Any]], view: SetupperView,
              correlation_id: str | None) -> Command | Setup:
        queues = view.queues()
        inputs = [InputFile(lfn=f["lfn"], dataset=_val(f.get("dataset")) or _val(f.get("prodDBlock")),
                            scope=_val(f.get("scope")), guid=_val(f.get("GUID")), fsize=_val(f.get("fsize")),
                            checksum=_val(f.get("checksum")))
                  for f in files if f.get("type") == "input" and f.get("lfn")]
        vo = _val(spec.get("VO"))

        # 1. the queue: given, or brokerage
        site = _val(spec.get("computingSite"))
        attrs: dict[str, Any] = {}
        reasons: list[str] = []
        if site is None or (site not in queues and site in {q.cloud for q in queues.values()}):
            if site is not None:
                spec = {**spec, "cloud": site}
            needs = brokerage.needs_of(spec, len(inputs))

            def local_count(q: Queue) -> int:
                try:
                    return len(inputs) - len(view.plugin(q, vo).missing_inputs(q.endpoint, inputs))
                except PluginError:
                    return 0

            choice = brokerage.choose(needs, queues.values(), local_count)
            if choice.queue is None:
                return _fail(pid, brokerage.failure_attrs(choice), choice.reason)
            queue = choice.queue
            attrs["computingSite"] = queue.name
            if queue.cloud:
                attrs["cloud"] = queue.cloud
            reasons.append(choice.reason)
        elif site not in queues:
            reason = f"brokerage: unknown queue {site} (known: {', '.join(sorted(queues)) or 'none'})"
            return _fail(pid, {"brokerageErrorCode": brokerage.EC_NO_QUEUE,
                               "brokerageErrorDiag": reason[:250]}, reason)
        else:
            queue = queues[site]

        # 2. the data plan (plugin queries only)
        plugin = view.plugin(queue, vo)
        plugin_spec = view.plugin_spec(queue, vo)
        try:
            missing = set(plugin.missing_inputs(queue.endpoint, inputs)) if inputs else set()
        except PluginError as exc:
            return self._ddm_failure(pid, exc)
        key = job_set_key(spec, pid)
        dis = f"panda.dis.{key}.{queue.name}" if missing else None
        patches: list[FileSpec] = []
        block_files: list[BlockFile] = []
        for f in inputs:
            if f.lfn in missing:
                patches.append(FileSpec(lfn=f.lfn, type="input", dispatchDBlock=dis, status="pending"))
                block_files.append(BlockFile(dataset=dis, pandaid=pid, lfn=f.lfn, type="input", status="pending"))
            else:
                patches.append(FileSpec(lfn=f.lfn, type="input", status="ready"))
        blocks: dict[str, OutputBlock] = {}
        for f in files:
            if f.get("type") not in ("output", "log") or not f.get("lfn"):
                continue
            dest, sub = self._output_blocks(f, spec, key, pid)
            endpoint = self._destination_endpoint(f, spec, queue, queues)
            blocks.setdefault(dest, OutputBlock(name=dest, kind="destination", endpoint=endpoint))
            blocks.setdefault(sub, OutputBlock(name=sub, kind="sub", endpoint=queue.endpoint, parent=dest))
            patches.append(FileSpec(lfn=f["lfn"], type=f["type"], dataset=dest, destinationDBlock=sub,
                                    destinationSE=endpoint, GUID=_val(f.get("GUID")) or file_guid(pid, f["lfn"])))
            block_files.append(BlockFile(dataset=sub, pandaid=pid, lfn=f["lfn"], type=f["type"], status="unknown"))
            block_files.append(BlockFile(dataset=dest, pandaid=pid, lfn=f["lfn"], type=f["type"],
                                         status="unknown"))

        # 3. the command, sent after the plugin and the datasets table have done their part
        if dis:
            attrs["dispatchDBlock"] = dis
            reasons.append(f"{len(missing)}/{len(inputs)} inputs to move to {queue.endpoint} in {dis}")
            action = "assign"
        else:
            reasons.append(f"{len(inputs)} inputs at {queue.endpoint}" if inputs else "no inputs")
            action = "activate"
        cmd = Transition(PandaID=pid, action=action, actor=ACTOR, attrs=attrs, files=patches,
                         reason="setupper: " + "; ".join(reasons), correlation_id=correlation_id)
        rows = [Block(name=b.name, type=b.kind, site=queue.name, endpoint=b.endpoint, parent=b.parent,
                      plugin=plugin_spec, vo=vo) for b in blocks.values()]
        steps: list = []
        if blocks:
            steps.append(functools.partial(plugin.prepare_outputs, list(blocks.values())))
        if dis:
            rows.append(Block(name=dis, type="dispatch", site=queue.name, endpoint=queue.endpoint,
                              plugin=plugin_spec, vo=vo))
            steps.append(functools.partial(plugin.prepare_dispatch, dis, queue.endpoint,
                                           [f for f in inputs if f.lfn in missing]))
        return Setup(pid=pid, label=f"setup {pid} at {queue.name}", command=cmd, steps=tuple(steps),
                     blocks=tuple(rows), files=tuple(block_files))

    @staticmethod
    def _output_blocks(f: dict[str, Any], spec: dict[str, Any], key: int, pid: int) -> tuple[str, str]:
        given = _val(f.get("destinationDBlock"))
        dest = _val(f.get("dataset"))
        if dest is None and given is not None:
            dest = _SUB.sub("", given)
        if dest is None:
            dest = _val(spec.get("destinationDBlock")) or f"panda.{key}.{f.get('type')}"
        dest = _SUB.sub("", dest)
        sub = given if given is not None and _SUB.search(given) else f"{dest}_sub{key:06d}"
        return dest, sub

    @staticmethod
    def _destination_endpoint(f: dict[str, Any], spec: dict[str, Any], queue: Queue,
                              queues: dict[str, Queue]) -> str:
        """Where the file must end up: its destinationSE (a queue name means that queue's endpoint)."""
        se = _val(f.get("destinationSE")) or _val(spec.get("destinationSE"))
        if se is None or se == "local" or se == queue.name:
            return queue.endpoint
        if se in queues:
            return queues[se].endpoint
        return se

    def _ddm_failure(self, pid: int, exc: Exception) -> Command:
        diag = f"setupper: {exc}"
        return _fail(pid, {"ddmErrorCode": EC_SETUPPER, "ddmErrorDiag": diag[:500]}, diag)

    def _on_error(self, pid: int, exc: Exception) -> list[Command]:
        if not isinstance(exc, PluginError):
            raise exc     # not a data-management verdict (e.g. the database is down): retry after restart
        return [self._ddm_failure(pid, exc)]


def _builtins(obj: Any) -> dict[str, Any]:
    return msgspec.to_builtins(obj)


# ------------------------------------------------------------------------------------------ the view
class LiveView:
    """The setupper's reads against the running system: sites table, jobs projection, plugins."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.sites = SitesCache(cfg)
        self._datasets = DatasetStore(cfg)
        self._jobs = JobReader(cfg, wait=cfg.setupper.job_wait)
        self._pg = db.Reconnecting(cfg)
        self._lock = threading.Lock()
        self.partitions: set[int] | None = None      # set by the loop before each tick
        self._swept: dict[int, float] = {}

    @property
    def datasets(self) -> DatasetStore:
        return self._datasets

    def queues(self) -> dict[str, Queue]:
        return self.sites.get()

    def plugin(self, queue: Queue, vo: str | None) -> DataPlugin:
        return for_queue(self.cfg, queue.plugin, vo)

    def plugin_spec(self, queue: Queue, vo: str | None) -> str:
        return spec_for(self.cfg, queue.plugin, vo)

    def job(self, panda_id: int, seq: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The job's spec and files once the projection has reached ``seq``; None if it does not in time."""
        with self._lock:
            try:
                row = self._jobs.job(panda_id, seq)
            except ProjectionLag:
                return None
            return row["spec"], self._jobs.files(panda_id)

    def stale_defined(self, partitions: set[int] | None, before: float, limit: int) -> list[tuple[int, int]]:
        with self._lock:
            return service_queries.stale_defined(self._pg.conn, partitions, before, limit)

    def swept_since(self, since: float) -> set[int]:
        self._swept = {pid: at for pid, at in self._swept.items() if at >= since}
        return set(self._swept)

    def mark_swept(self, pandaids: Sequence[int], at: float) -> None:
        self._swept.update(dict.fromkeys(pandaids, at))

    def close(self) -> None:
        self._datasets.close()
        self._jobs.close()
        self._pg.close()


def hosted(cfg: Config) -> Member:
    """The setupper as the reactors host or `pandaes run setupper` runs it (queues loaded if none yet)."""
    if cfg.setupper.configure_at_start:
        configurator.ensure(cfg, who=NAME)
    view = LiveView(cfg)
    service = Setupper(sweep_after=cfg.setupper.sweep_after, sweep_batch=cfg.setupper.sweep_batch)
    return Member(service, view, tick_every=cfg.setupper.sweep_every, close=view.close)


def run_component(cfg: Config, stop: threading.Event, *, replay: bool = False) -> None:
    """`pandaes run setupper`: the setupper alone in its own consumer group."""
    run_alone(cfg, stop, hosted(cfg), replay=replay)
