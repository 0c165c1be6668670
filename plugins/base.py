"""The data plugin interface: everything experiment-specific about moving and registering files.

PanDA keeps data management behind per-VO plugins (``setupper_plugins`` / ``adder_plugins``,
``vo:module:Class``). pandaes has ONE plugin object per experiment that serves both ends of a job:

* the **setupper** side (before the job runs): where are the inputs, make a *dispatch block* that
  moves the missing inputs to the job's storage endpoint, create the *destination* and *sub*
  blocks the outputs will go into; the **activator** asks whether a dispatch block has arrived.
* the **adder / finisher** side (after the job ran): register the outputs into their sub and
  destination blocks, start moving them to a remote destination endpoint, and tell whether they
  have arrived.

Two kinds of methods, and the difference matters for replay (see services/loop.py):

* **queries** (``locate``, ``missing_inputs``, ``dispatch_ready``, ``outputs_arrived``) only read; a
  service may call them from ``decide``/``tick`` through its view, also during replay.
* **actions** (``prepare_dispatch``, ``prepare_outputs``, ``register_outputs``, ``transfer_outputs``,
  ``pump``) change storage or catalogues. Services never call them in ``decide``; they return a
  ``services.loop.Action`` and the loop runs it unless it is replaying. Every action must be
  idempotent: after a crash the same action may run again.

Errors: raise ``PluginError``. ``temporary=True`` means "try again later" (the adder keeps the report
and retries), otherwise the failure is final (the setupper fails the job with ddmErrorCode 100).

Names: a *storage endpoint* is a string (PanDA's DDM endpoint / RSE, e.g. ``LOCAL_DATADISK``); a
queue lists its endpoints in the sites table (``services.sitedata.sites``), the first one is where its jobs
read inputs and write outputs. A *block* is a dataset name (``datasets`` table, migration 101).

Loading: ``plugins.load(spec, cfg)`` where spec is an entry point name of group ``pandaes.plugins``
(``local``, ``dummy``) or a dotted ``module:Class``; ``plugins.for_queue`` picks the queue's plugin,
else the VO's (``[plugins] vo_map = ["atlas:mypkg.mod:AtlasPlugin", …]``), else ``[plugins] default``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import msgspec

from core.config import Config


class PluginError(Exception):
    """A data-management failure; ``temporary`` ones are retried later, the others are final."""

    def __init__(self, message: str, *, temporary: bool = False):
        super().__init__(message)
        self.temporary = temporary


class InputFile(msgspec.Struct, frozen=True, kw_only=True):
    """An input replica a job needs (FileSpec type ``input``)."""

    lfn: str
    dataset: str | None = None        # FileSpec.dataset / prodDBlock: where the file is catalogued
    scope: str | None = None
    guid: str | None = None
    fsize: int | None = None
    checksum: str | None = None


class OutputBlock(msgspec.Struct, frozen=True, kw_only=True):
    """A destination block (the final output dataset) or one of its sub blocks (``<dataset>_subNNN``)."""

    name: str
    kind: str                         # "destination" | "sub"
    endpoint: str                     # where the block's files live
    parent: str | None = None         # sub: its destination block


class OutputFile(msgspec.Struct, frozen=True, kw_only=True):
    """An output or log file a job produced, as the pilot reported it (the adder fills this in)."""

    lfn: str
    type: str = "output"              # "output" | "log"
    dataset: str                      # the destination block (FileSpec.dataset)
    block: str                        # the sub block (FileSpec.destinationDBlock)
    destination: str                  # the endpoint it must finally be at (FileSpec.destinationSE)
    scope: str | None = None
    guid: str | None = None
    fsize: int | None = None
    checksum: str | None = None
    pandaid: int | None = None
    surl: str | None = None           # where the pilot says it put the file, if it said


class DataPlugin(ABC):
    """One experiment's data management; one instance per process, shared by the services in it.

    Subclasses get ``cfg`` (the whole configuration; their settings live in ``[plugins]``) and must
    be thread-safe for queries (the gateway and services may share one instance).
    """

    name: str = "abstract"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    # ------------------------------------------------------------------------------ queries (read only)
    @abstractmethod
    def locate(self, files: Sequence[InputFile]) -> dict[str, set[str]]:
        """lfn → the endpoints holding a replica (an lfn found nowhere maps to an empty set)."""

    def missing_inputs(self, endpoint: str, files: Sequence[InputFile]) -> list[str]:
        """The lfns of ``files`` that are not at ``endpoint`` (so need a dispatch block)."""
        where = self.locate(files)
        return [f.lfn for f in files if endpoint not in where.get(f.lfn, ())]

    @abstractmethod
    def dispatch_ready(self, block: str) -> bool:
        """True when every file of dispatch block ``block`` is at the block's endpoint."""

    @abstractmethod
    def outputs_arrived(self, files: Sequence[OutputFile]) -> list[str]:
        """The lfns of ``files`` that are now at their ``destination`` endpoint."""

    # ---------------------------------------------------------------------- actions (never in replay)
    @abstractmethod
    def prepare_dispatch(self, block: str, endpoint: str, files: Sequence[InputFile]) -> None:
        """Create dispatch block ``block`` and start moving ``files`` to ``endpoint``.

        Files already at the endpoint count as arrived. Adding files to an existing block is allowed
        (several jobs of a job set share one block). Raise PluginError if a file exists nowhere.
        """

    @abstractmethod
    def prepare_outputs(self, blocks: Sequence[OutputBlock]) -> None:
        """Create destination and sub blocks (existing ones are left as they are)."""

    @abstractmethod
    def register_outputs(self, files: Sequence[OutputFile], endpoint: str) -> None:
        """Register files the job wrote at ``endpoint`` into their sub block and destination block."""

    @abstractmethod
    def transfer_outputs(self, files: Sequence[OutputFile]) -> None:
        """Start moving registered files to their ``destination`` endpoint (a no-op for files there)."""

    def pump(self) -> int:
        """Advance transfers whose time has come; returns how many files moved. Default: nothing."""
        return 0

    # ------------------------------------------------------------------------------------- description
    def describe(self) -> dict[str, Any]:
        """What the plugin is, for logs and queuedata."""
        return {"plugin": self.name}
