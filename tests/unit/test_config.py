"""The configuration: typed sections that match defaults.toml key for key, and clear errors for bad values."""

from __future__ import annotations

import tomllib

import msgspec
import pytest

from core import config, settings


def test_every_default_has_a_typed_field_and_every_field_a_default():
    defaults = tomllib.loads(config.DEFAULTS_FILE.read_text())
    assert set(defaults) == set(settings.SECTIONS)
    for name, kind in settings.SECTIONS.items():
        assert set(defaults[name]) == {f.name for f in msgspec.structs.fields(kind)}, name


def test_sections_are_typed():
    cfg = config.load({})
    assert isinstance(cfg.kafka, settings.KafkaSettings)
    assert isinstance(cfg.kafka.partitions, int)
    assert isinstance(cfg.watcher.heartbeat_timeout, float)
    assert cfg.kafka.get("client") == "confluent"
    assert cfg.as_dict()["http"]["port"] == cfg.http.port


def test_environment_values_take_the_type_of_the_setting():
    cfg = config.load({"PANDAES_WATCHER_HEARTBEAT_TIMEOUT": "0.5", "PANDAES_KAFKA_PARTITIONS": "3",
                       "PANDAES_GATEWAY_DEFAULT_QUEUES": "A, B"})
    assert cfg.watcher.heartbeat_timeout == 0.5
    assert cfg.kafka.partitions == 3
    assert cfg.gateway.default_queues == ["A", "B"]


@pytest.mark.parametrize("env, named", [
    ({"PANDAES_KAFKA_PARTITIONS": "many"}, "PANDAES_KAFKA_PARTITIONS"),
    ({"PANDAES_WATCHER_NO_SUCH_KEY": "1"}, "PANDAES_WATCHER_NO_SUCH_KEY"),
])
def test_bad_environment_values_are_named(env, named):
    with pytest.raises(config.ConfigError, match=named):
        config.load(env)


def test_replace_checks_types_and_names():
    cfg = config.load({})
    assert cfg.replace(watcher={"sent_timeout": 1.5}).watcher.sent_timeout == 1.5
    with pytest.raises(config.ConfigError, match=r"\[kafka\].*partitions"):
        cfg.replace(kafka={"partitions": "abc"})
    with pytest.raises(config.ConfigError, match="unknown setting"):
        cfg.replace(kafka={"partition": 3})


def test_config_declares_every_section_with_its_type():
    hints = config.Config.__annotations__
    assert {name: hints.get(name) for name in settings.SECTIONS} == {
        name: f"settings.{kind.__name__}" for name, kind in settings.SECTIONS.items()}
