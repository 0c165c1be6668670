"""`pandaes chaos` as an operator runs it: a short run (100 jobs; kills of the ledger, the gateway, the reactors'
host with the projections in it, the daemon and the embedded database) must end with every invariant PASS.

The broker kill is left to the long run (docs/reliability.md): waiting for a quiet point and restarting every
component after the restore takes about a minute on a loaded machine, more than this test may take."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

INVARIANTS = ("every job final", "per-job seqs exactly 1..n", "no double dispatch", "no duplicate command applied",
              "projections equal the fold of the log")


@pytest.fixture
def state_dir():
    """Not under pytest's tmp_path: pytest sets its base folder back to 0700 whenever another session starts,
    which locks the embedded PostgreSQL's own account out of its files in the middle of the run. Removed when
    the run passed; a failed run's folder (component logs, the database) is kept and named in the failure."""
    path = Path(tempfile.mkdtemp(prefix="pandaes-chaos-"))
    yield path
    if (path / "passed").exists():
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(600)   # about 70 s on a quiet machine; a loaded one restarts processes slowly
def test_short_chaos_run_keeps_every_invariant(state_dir: Path):
    env = dict(os.environ)   # the run names its own database, state folder and ports
    for var in ("PANDAES_KAFKA", "PANDAES_DB", "PANDAES_CONFIG"):
        env.pop(var, None)
    # what `pandaes run` starts but the monitor: the reactors (setupper, activator, adder …) hosted in one process,
    # which applies the projections too ([reactors] projector, the default)
    env.pop("PANDAES_REACTORS_PROJECTOR", None)
    flow = "ledger,reactors,daemon,gateway"
    targets = "ledger,gateway,reactors,daemon,database"
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "chaos", "--jobs", "100", "--kills", "5", "--duration", "35",
         "--components", flow, "--targets", targets, "--pilots", "8", "--batch", "20", "--seed", "7",
         "--sent-timeout", "60", "--embedded-db", "--state-dir", str(state_dir), "--finish-timeout", "240",
         "--progress", "10"],
        env=env, capture_output=True, text=True, timeout=560)
    out = run.stdout
    assert run.returncode == 0, f"(state and component logs kept in {state_dir})\n" + out[-6000:] + run.stderr[-3000:]
    for name in INVARIANTS:
        assert f"PASS  {name}:" in out, out[-4000:]
    assert "FAIL" not in out
    assert "100 submitted by the run, 0 of them missing" in out
    # each target was killed once (one round of the plan), the database included
    kills = out.split("chaos: 5 kills (", 1)[1].split(")", 1)[0].split(", ")
    assert sorted(kills) == sorted(targets.split(","))
    assert "chaos t=" in out                     # progress lines while it ran
    assert "database back on its port" in out
    (state_dir / "passed").touch()
