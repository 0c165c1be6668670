"""cli/main.py: a refused restore (`make run` restoring a lost embedded log) ends with its reason, not a trace."""

from __future__ import annotations

from cli import main as cli_main
from cli.restore import RestoreError


def test_a_refused_restore_is_reported_in_one_line_with_exit_code_2(monkeypatch, capsys):
    def refused(args):
        raise RestoreError("with 4 partitions the archived events' keys map elsewhere; start with PANDAES_PARTITIONS=8")

    monkeypatch.setattr(cli_main, "cmd_run", refused)
    assert cli_main.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "restore refused" in err and "PANDAES_PARTITIONS=8" in err
    assert "Traceback" not in err
