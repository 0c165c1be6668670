"""A data plugin for the service tests: succeeds like ``dummy`` except where a test asks otherwise.

* outputs whose lfn starts with ``flaky`` fail registration once, temporarily (the adder must defer);
* outputs whose lfn contains ``stuck`` never arrive at their destination (the finisher must time out).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from plugins.base import DataPlugin, InputFile, OutputBlock, OutputFile, PluginError


class FlakyPlugin(DataPlugin):
    name = "flaky"
    failed_once: set[str] = set()
    registered: list[tuple[int | None, str, str]] = []
    _lock = threading.Lock()

    def locate(self, files: Sequence[InputFile]) -> dict[str, set[str]]:
        return {f.lfn: {"*"} for f in files}

    def dispatch_ready(self, block: str) -> bool:
        return True

    def outputs_arrived(self, files: Sequence[OutputFile]) -> list[str]:
        return [f.lfn for f in files if "stuck" not in f.lfn]

    def prepare_dispatch(self, block: str, endpoint: str, files: Sequence[InputFile]) -> None:
        pass

    def prepare_outputs(self, blocks: Sequence[OutputBlock]) -> None:
        pass

    def register_outputs(self, files: Sequence[OutputFile], endpoint: str) -> None:
        with self._lock:
            for f in files:
                if f.lfn.startswith("flaky") and f.lfn not in self.failed_once:
                    self.failed_once.add(f.lfn)
                    raise PluginError(f"{f.lfn}: storage busy", temporary=True)
            self.registered += [(f.pandaid, f.lfn, f.block) for f in files]

    def transfer_outputs(self, files: Sequence[OutputFile]) -> None:
        pass
