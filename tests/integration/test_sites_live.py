"""The configurator's queue versions in PostgreSQL and the queuedata that follows them (queue file parsing:
tests/unit/test_sites.py)."""

from __future__ import annotations

from core import db
from services.sitedata import configurator, sites


def test_configurator_records_versions_and_queuedata_follows(cfg, tmp_path):
    path = tmp_path / "q.toml"
    path.write_text("[defaults]\nmaxrss = 2000\n[queues.A]\ncloud = 'EU'\n[queues.B]\n"
                    "[queues.B.queuedata]\ntimefloor = 30\n")
    first = configurator.configure(cfg, path, who="test")
    assert {(c["name"], c["version"]) for c in first} == {("A", 1), ("B", 1)}
    assert first[0]["change"]["created"] is True
    assert configurator.configure(cfg, path, who="test") == [], "an unchanged file changes nothing"

    path.write_text("[defaults]\nmaxrss = 4000\n[queues.A]\ncloud = 'EU'\nstatus = 'offline'\n")
    second = configurator.configure(cfg, path, who="operator")
    assert {c["name"]: c["change"] for c in second} == {
        "A": {"maxrss": [2000, 4000], "status": ["online", "offline"]}, "B": {"removed": True}}
    with db.connect(cfg) as conn:
        assert sites.queuedata(conn, "B") is None
        data = sites.queuedata(conn, "A")
        assert (data["status"], data["maxrss"], data["cloud"], data["pandaes"]["version"]) == ("offline", 4000, "EU", 2)
        hist = sites.history(conn, "A")
        assert [(h["version"], h["changed_by"]) for h in hist] == [(1, "test"), (2, "operator")]
        assert sites.history(conn, "B")[-1]["change"] == {"removed": True}
        # re-adding B continues its version numbers
    path.write_text("[queues.B]\n")
    assert [(c["name"], c["version"]) for c in configurator.configure(cfg, path) if c["name"] == "B"] == [("B", 3)]
    with db.connect(cfg) as conn:
        assert sites.queuedata(conn, "B")["timefloor"] == 0
        assert configurator.ensure(cfg, "test") == [], "ensure only fills an empty table"
