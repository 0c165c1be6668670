"""The database schema of the whole system: every migrations folder, and the one call that applies them.

Why here: each table's SQL lives beside its owner (the projections' read models in
``projections/migrations``, a service's own tables in that service's ``migrations/`` folder), and
``core.db.migrate`` applies whatever folders it is given but may not know the owners (core imports
nothing above it). ``services/`` is the lowest floor that sees both projections and services, so the
list is defined here, once; the CLI, the developer stack, the tests and the bench all migrate through
``migrate`` below.

Version numbers are unique across folders and the files are applied in one numeric order (existing
databases record applied versions by number): 0xx projections, 1xx reactors and site data, 2xx gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core import db
from core.config import Config

_ROOT = Path(__file__).resolve().parent.parent

MIGRATIONS: tuple[Path, ...] = (
    _ROOT / "core" / "migrations",                  # payloads: large fields beside the events (core/payloads.py)
    _ROOT / "projections" / "migrations",           # read models: jobs, files, job_events, positions
    _ROOT / "services" / "sitedata" / "migrations",  # sites, site_versions
    _ROOT / "services" / "reactors" / "migrations",  # datasets, dataset_files, retries, adder_pending
    _ROOT / "services" / "gateway" / "migrations",   # dispatcher leases
    _ROOT / "services" / "harvester" / "migrations",  # harvester instances, workers, commands
    _ROOT / "services" / "eventservice" / "migrations",  # event ranges and their changes
    _ROOT / "services" / "dead_letters" / "migrations",  # service_dead_letters (services/loop.py)
)


def migrate(cfg_or_url: Config | str, log: Callable[[str], None] = lambda msg: None) -> list[int]:
    """Apply every migration of every folder in ``MIGRATIONS`` not yet applied; the versions applied now."""
    return db.migrate(cfg_or_url, folders=MIGRATIONS, log=log)
