"""Experiment-specific behaviour (data placement, output registration) behind one small interface.

``plugins.base.DataPlugin`` is the interface; ``load`` turns a plugin spec into an instance:

* an entry point name of group ``pandaes.plugins`` (``local``, ``dummy``, or a third party's), or
* a dotted ``module:Class`` (PanDA's ``module:Class`` part of ``vo:module:Class``).

``for_queue`` applies PanDA's selection order: the queue's own ``plugin``, else the job's VO in
``[plugins] vo_map`` (entries ``"vo:spec"``; ``any`` matches every VO), else ``[plugins] default``.
Instances are cached per (spec, configuration) so the services of one process share one object.
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points
from typing import Any

from core.config import Config
from plugins.base import DataPlugin, InputFile, OutputBlock, OutputFile, PluginError

__all__ = ["DataPlugin", "InputFile", "OutputBlock", "OutputFile", "PluginError", "load", "for_queue",
           "spec_for"]

GROUP = "pandaes.plugins"
# used when the package's entry points are not installed (a source checkout run without pip install)
BUILTIN = {"local": "plugins.local:LocalPlugin", "dummy": "plugins.dummy:DummyPlugin"}

_cache: dict[tuple[str, int], DataPlugin] = {}
_lock = threading.Lock()


class PluginLoadError(ValueError):
    """A plugin spec that names nothing loadable."""


def _resolve(spec: str) -> type[DataPlugin]:
    if ":" in spec:
        target = spec
    else:
        found = [ep for ep in entry_points(group=GROUP) if ep.name == spec]
        if found:
            cls = found[0].load()
            return _check(spec, cls)
        if spec not in BUILTIN:
            known = sorted({ep.name for ep in entry_points(group=GROUP)} | set(BUILTIN))
            raise PluginLoadError(f"no data plugin named {spec!r} (known: {', '.join(known)}; "
                                  "or give module:Class)")
        target = BUILTIN[spec]
    module_name, _, attr = target.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginLoadError(f"plugin {spec!r}: cannot import {module_name}: {exc}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise PluginLoadError(f"plugin {spec!r}: {module_name} has no {attr}") from None
    return _check(spec, cls)


def _check(spec: str, cls: Any) -> type[DataPlugin]:
    if not (isinstance(cls, type) and issubclass(cls, DataPlugin)):
        raise PluginLoadError(f"plugin {spec!r} is {cls!r}, not a plugins.base.DataPlugin subclass")
    return cls


def load(spec: str, cfg: Config) -> DataPlugin:
    """The (cached) plugin instance for ``spec``."""
    key = (spec, id(cfg))
    with _lock:
        plugin = _cache.get(key)
        if plugin is None:
            plugin = _cache[key] = _resolve(spec)(cfg)
        return plugin


def spec_for(cfg: Config, queue_plugin: str | None, vo: str | None) -> str:
    """Which plugin spec applies: the queue's, else the VO's from ``vo_map``, else the default."""
    if queue_plugin:
        return queue_plugin
    fallback = None
    for entry in cfg.plugins.vo_map:
        name, _, spec = entry.partition(":")
        if not spec:
            raise PluginLoadError(f"[plugins] vo_map entry {entry!r} is not 'vo:spec'")
        if vo and vo.lower() in name.lower().split("|"):   # PanDA's "vo1|vo2:module:Class"
            return spec
        if name == "any" and fallback is None:
            fallback = spec
    return fallback or cfg.plugins.default


def for_queue(cfg: Config, queue_plugin: str | None, vo: str | None = None) -> DataPlugin:
    return load(spec_for(cfg, queue_plugin, vo), cfg)
