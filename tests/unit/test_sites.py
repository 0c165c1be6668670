"""Queue file parsing and the queuedata made of a queue (no database)."""

from __future__ import annotations

import pytest

from services.sitedata import sites
from services.sitedata.sites import QueueConfigError


def test_shipped_file_has_an_online_local_queue_with_the_local_plugin():
    qs = sites.load_file()
    local = qs["LOCAL"]
    assert (local.status, local.plugin, local.endpoint) == ("online", "local", "LOCAL_DATADISK")
    data = sites.make_queuedata(local)
    for key in ("nickname", "panda_resource", "atlas_site", "name", "state", "status", "type", "maxwdir",
                "maxrss", "maxtime", "corecount", "timefloor", "pledgedcpu", "is_cvmfs", "copytools", "acopytools",
                "astorages", "aprotocols", "params", "catchall", "container_type", "container_options",
                "direct_access_lan", "direct_access_wan"):
        assert key in data, key
    assert data["state"] == "ACTIVE" and data["acopytools"]["pw"] == ["mv"]


@pytest.mark.parametrize("text, message", [
    ("[queues.X]\nstatus = 'sleepy'", "status 'sleepy'"),
    ("[queues.X]\nmaxrss = -1", "maxrss = -1"),
    ("[queues.X]\ncolour = 'red'", "unknown keys ['colour']"),
    ("[queue.X]", "unknown top-level keys"),
    ("[queues.X]\nendpoints = ['a/b']", "endpoints must be names"),
])
def test_bad_queue_files_are_refused_with_the_reason(text, message, tmp_path):
    path = tmp_path / "q.toml"
    path.write_text(text)
    with pytest.raises(QueueConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sites.load_file(path)
