"""The ``dummy`` data plugin: every data operation succeeds at once and touches nothing.

For benchmarks and for measuring the services without storage in the way (PanDA's
``setupper_dummy_plugin`` / ``adder_dummy_plugin``). ``[plugins] dummy_inputs_local`` chooses the
path jobs take: true → inputs count as already at the queue (defined → activated), false → every
input needs a dispatch block, which is ready at once (defined → assigned → activated).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.config import Config
from plugins.base import DataPlugin, InputFile, OutputBlock, OutputFile


class DummyPlugin(DataPlugin):
    name = "dummy"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.inputs_local = bool(cfg.plugins.dummy_inputs_local)
        self.calls: dict[str, int] = {}

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def locate(self, files: Sequence[InputFile]) -> dict[str, set[str]]:
        return {f.lfn: {"*"} for f in files}

    def missing_inputs(self, endpoint: str, files: Sequence[InputFile]) -> list[str]:
        return [] if self.inputs_local else [f.lfn for f in files]

    def dispatch_ready(self, block: str) -> bool:
        return True

    def outputs_arrived(self, files: Sequence[OutputFile]) -> list[str]:
        return [f.lfn for f in files]

    def prepare_dispatch(self, block: str, endpoint: str, files: Sequence[InputFile]) -> None:
        self._count("prepare_dispatch")

    def prepare_outputs(self, blocks: Sequence[OutputBlock]) -> None:
        self._count("prepare_outputs")

    def register_outputs(self, files: Sequence[OutputFile], endpoint: str) -> None:
        self._count("register_outputs")

    def transfer_outputs(self, files: Sequence[OutputFile]) -> None:
        self._count("transfer_outputs")
