"""Data plugins without Kafka: loading by name and dotted path, the local plugin on a real directory,
the dummy plugin."""

from __future__ import annotations

import json

import pytest
from helpers import wait_until

import plugins
from core import config
from plugins import InputFile, OutputBlock, OutputFile, PluginError
from plugins.dummy import DummyPlugin
from plugins.local import LocalPlugin


@pytest.fixture
def pcfg(tmp_path):
    return config.load().replace(state={"dir": str(tmp_path)}, plugins={"local_transfer_delay": 0.3})


def put(plugin: LocalPlugin, endpoint: str, dataset: str, lfn: str, data: str = "x") -> None:
    path = plugin.root / endpoint / dataset / lfn
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def test_loading_by_entry_point_dotted_path_and_vo(pcfg):
    assert isinstance(plugins.load("local", pcfg), LocalPlugin)
    assert plugins.load("local", pcfg) is plugins.load("local", pcfg), "one instance per process and config"
    assert isinstance(plugins.load("plugins.dummy:DummyPlugin", pcfg), DummyPlugin)
    with pytest.raises(plugins.PluginLoadError, match="no data plugin named 'nope'"):
        plugins.load("nope", pcfg)
    with pytest.raises(plugins.PluginLoadError, match="not a plugins.base.DataPlugin"):
        plugins.load("core.config:Config", pcfg)
    c = pcfg.replace(plugins={"vo_map": ["atlas|cms:dummy", "any:plugins.local:LocalPlugin"]})
    assert plugins.spec_for(c, None, "cms") == "dummy"
    assert plugins.spec_for(c, None, "lsst") == "plugins.local:LocalPlugin"
    assert plugins.spec_for(c, "dummy", "lsst") == "dummy", "the queue's own plugin wins"
    assert plugins.spec_for(pcfg, None, None) == "local"


def test_local_dispatch_moves_inputs_after_the_delay(pcfg):
    p = LocalPlugin(pcfg)
    put(p, "SRC_DISK", "ds.in", "a.root", "AAA")
    put(p, "SITE_DISK", "ds.in", "b.root", "BBB")
    files = [InputFile(lfn="a.root", dataset="ds.in"), InputFile(lfn="b.root", dataset="ds.in")]
    assert p.locate(files) == {"a.root": {"SRC_DISK"}, "b.root": {"SITE_DISK"}}
    assert p.missing_inputs("SITE_DISK", files) == ["a.root"]
    p.prepare_dispatch("panda.dis.1.SITE", "SITE_DISK", files)
    assert not p.dispatch_ready("panda.dis.1.SITE"), "the transfer takes local_transfer_delay"
    assert p.pump() == 0, "not due yet"
    moved = wait_until(p.pump, 5, 0.05, "the dispatch transfer to become due")
    assert moved == 2 and p.pump() == 0
    assert p.dispatch_ready("panda.dis.1.SITE")
    assert (p.root / "SITE_DISK" / "ds.in" / "a.root").read_text() == "AAA"
    assert p.missing_inputs("SITE_DISK", files) == []
    p.prepare_dispatch("panda.dis.1.SITE", "SITE_DISK", files)       # idempotent
    assert p.dispatch_ready("panda.dis.1.SITE")
    assert [e["op"] for e in p.catalogue()] == ["dispatch", "dispatch"]


def test_local_dispatch_of_a_file_that_exists_nowhere_fails(pcfg):
    p = LocalPlugin(pcfg)
    with pytest.raises(PluginError, match="is at no endpoint"):
        p.prepare_dispatch("panda.dis.2.SITE", "SITE_DISK", [InputFile(lfn="ghost.root", dataset="ds")])
    with pytest.raises(PluginError, match="cannot be used"):
        p.missing_inputs("SITE_DISK", [InputFile(lfn="../etc/passwd")])


def test_local_outputs_register_and_transfer(pcfg):
    p = LocalPlugin(pcfg)
    p.prepare_outputs([OutputBlock(name="out", kind="destination", endpoint="REMOTE_DISK"),
                       OutputBlock(name="out_sub000007", kind="sub", endpoint="SITE_DISK", parent="out")])
    (p.root / "SITE_DISK" / "o.root").write_text("payload")           # what the pilot wrote
    files = [OutputFile(lfn="o.root", dataset="out", block="out_sub000007", destination="REMOTE_DISK",
                        guid="g1", fsize=7, checksum="ad:1"),
             OutputFile(lfn="log.tgz", type="log", dataset="out", block="out_sub000007", destination="REMOTE_DISK")]
    p.register_outputs(files, "SITE_DISK")
    assert (p.root / "SITE_DISK" / "out_sub000007" / "o.root").read_text() == "payload"
    assert json.loads((p.root / "SITE_DISK" / "out" / "log.tgz").read_text())["stub"], "missing log: a stub"
    assert set(p.manifest("out_sub000007")["files"]) == {"o.root", "log.tgz"}
    assert p.outputs_arrived(files) == []
    p.transfer_outputs(files)
    assert wait_until(p.pump, 5, 0.05, "the output transfer to become due") == 2
    assert p.outputs_arrived(files) == ["o.root", "log.tgz"]
    assert (p.root / "REMOTE_DISK" / "out" / "o.root").read_text() == "payload"
    registered = [e for e in p.catalogue() if e["op"] == "register"]
    assert {(e["lfn"], e["guid"]) for e in registered} == {("o.root", "g1"), ("log.tgz", None)}

    strict = LocalPlugin(pcfg.replace(plugins={"local_strict_outputs": True}))
    with pytest.raises(PluginError, match="was not found"):
        strict.register_outputs([OutputFile(lfn="never.root", dataset="out", block="out_sub000007",
                                            destination="SITE_DISK")], "SITE_DISK")


def test_dummy_always_succeeds(pcfg):
    d = DummyPlugin(pcfg)
    f = [InputFile(lfn="x")]
    assert d.missing_inputs("ANY", f) == [] and d.dispatch_ready("whatever")
    d2 = DummyPlugin(pcfg.replace(plugins={"dummy_inputs_local": False}))
    assert d2.missing_inputs("ANY", f) == ["x"]
    out = [OutputFile(lfn="o", dataset="d", block="d_sub1", destination="E")]
    d.register_outputs(out, "E")
    d.transfer_outputs(out)
    assert d.outputs_arrived(out) == ["o"]


def test_local_registration_appends_to_a_dataset_instead_of_rewriting_it(pcfg):
    """The n-th file of a dataset costs what the first did: the block's header is written once, files appended."""
    p = LocalPlugin(pcfg.replace(plugins={"local_transfer_delay": 0}))
    p.prepare_outputs([OutputBlock(name="big", kind="destination", endpoint="SITE_DISK"),
                       OutputBlock(name="big_sub1", kind="sub", endpoint="SITE_DISK", parent="big")])
    header = p.root / ".pandaes" / "blocks" / "big.json"
    before = header.stat().st_ino, header.read_text()
    for batch in range(20):
        p.register_outputs([OutputFile(lfn=f"f{batch}.{i}", dataset="big", block="big_sub1",
                                       destination="SITE_DISK", guid=f"g{batch}.{i}") for i in range(5)], "SITE_DISK")
    assert (header.stat().st_ino, header.read_text()) == before, "the header was rewritten"
    files = p.manifest("big")["files"]
    assert len(files) == 100 and files["f7.3"]["guid"] == "g7.3" and files["f7.3"]["sub"] == "big_sub1"
    p.register_outputs([OutputFile(lfn="f7.3", dataset="big", block="big_sub1", destination="SITE_DISK",
                                   guid="g7.3", checksum="ad:9")], "SITE_DISK")
    assert p.manifest("big")["files"]["f7.3"]["checksum"] == "ad:9", "a later registration updates the entry"
    p.register_outputs([OutputFile(lfn="x", dataset="big", block="big_sub1", destination="OTHER_DISK")], "SITE_DISK")
    assert p.manifest("big")["endpoints"] == ["OTHER_DISK", "SITE_DISK"], "a new endpoint changes the header"
