"""One configuration for every component.

Values come from three layers, later ones winning:
  1. ``core/defaults.toml`` shipped with the code (every key must have a default there, so a typo
     in an override is an error instead of a silently ignored setting);
  2. an optional TOML file named by ``PANDAES_CONFIG``;
  3. environment variables ``PANDAES_<SECTION>_<KEY>`` (and a few shortcuts such as ``PANDAES_KAFKA``).

Environment values are strings; they are converted to the type of the default they replace, and a
value that does not convert is reported with the variable's name.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from core import settings

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")

SHORTCUTS = {
    "PANDAES_KAFKA": ("kafka", "bootstrap"),
    "PANDAES_DB": ("db", "url"),
    "PANDAES_HTTP_PORT": ("http", "port"),
    "PANDAES_STATE_DIR": ("state", "dir"),
    "PANDAES_PARTITIONS": ("kafka", "partitions"),
}


class ConfigError(ValueError):
    """A setting that does not exist or does not have the right type."""


class Config:
    """All sections, typed (``core/settings.py``): ``cfg.kafka.bootstrap``, ``cfg.watcher.heartbeat_timeout`` …"""

    state: settings.StateSettings
    kafka: settings.KafkaSettings
    db: settings.DbSettings
    ledger: settings.LedgerSettings
    projections: settings.ProjectionsSettings
    http: settings.HttpSettings
    gateway: settings.GatewaySettings
    dispatcher: settings.DispatcherSettings
    watcher: settings.WatcherSettings
    adder: settings.AdderSettings
    closer: settings.CloserSettings
    finisher: settings.FinisherSettings
    retry: settings.RetrySettings
    daemon: settings.DaemonSettings
    plugins: settings.PluginsSettings
    sites: settings.SitesSettings
    setupper: settings.SetupperSettings
    activator: settings.ActivatorSettings
    reactors: settings.ReactorsSettings
    metrics: settings.MetricsSettings
    log: settings.LogSettings
    monitor: settings.MonitorSettings
    auth: settings.AuthSettings
    creds: settings.CredsSettings

    def __init__(self, data: Mapping[str, Mapping[str, Any]]):
        missing = set(settings.SECTIONS) - set(data)
        if missing:
            raise ConfigError(f"missing section(s): {', '.join(sorted(missing))}")
        for name, values in data.items():
            kind = settings.SECTIONS.get(name)
            if kind is None:
                raise ConfigError(f"unknown section [{name}]")
            try:
                section = msgspec.convert(dict(values), kind, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"[{name}]: {exc}") from None
            object.__setattr__(self, name, section)

    def replace(self, **changes: Mapping[str, Any]) -> Config:
        """A copy with some keys changed, e.g. ``cfg.replace(kafka={"bootstrap": "h:9092"})``."""
        data = self.as_dict()
        for name, values in changes.items():
            _merge(data, {name: dict(values)}, origin="replace()")
        return Config(data)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).as_dict() for name in settings.SECTIONS}

    @property
    def state_dir(self) -> Path:
        path = Path(self.state.dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()


def _convert(raw: str, default: Any, name: str, section: str = "", key: str = "") -> Any:
    """``raw`` (an environment value) as the type of the setting it overrides."""
    kind = settings.SECTIONS.get(section)
    field = next((f for f in msgspec.structs.fields(kind) if f.name == key), None) if kind else None
    if field is not None and field.type is float:
        default = float(default)
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            return [item.strip() for item in raw.split(",") if item.strip()]
        return raw
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {type(default).__name__}") from None


def _merge(base: dict[str, dict[str, Any]], over: Mapping[str, Any], origin: str) -> None:
    for section, values in over.items():
        if section not in base:
            raise ConfigError(f"{origin}: unknown section [{section}]")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError(f"{origin}: unknown setting [{section}] {key}")
            base[section][key] = value


def load(env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from defaults, ``PANDAES_CONFIG`` and the environment."""
    env = os.environ if env is None else env
    data: dict[str, dict[str, Any]] = tomllib.loads(DEFAULTS_FILE.read_text())
    extra = env.get("PANDAES_CONFIG")
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise ConfigError(f"PANDAES_CONFIG={extra}: no such file")
        _merge(data, tomllib.loads(path.read_text()), origin=str(path))
    for var, (section, key) in SHORTCUTS.items():
        if var in env:
            data[section][key] = _convert(env[var], data[section][key], var, section, key)
    for var, raw in env.items():
        if not var.startswith("PANDAES_") or var in SHORTCUTS or var == "PANDAES_CONFIG":
            continue
        rest = var[len("PANDAES_"):].lower()
        section = next((s for s in data if rest.startswith(s + "_")), None)
        if section is None:
            continue  # other PANDAES_* variables (e.g. test switches) are not settings
        key = rest[len(section) + 1:]
        if key not in data[section]:
            raise ConfigError(f"{var}: unknown setting [{section}] {key}")
        data[section][key] = _convert(raw, data[section][key], var, section, key)
    return Config(data)
