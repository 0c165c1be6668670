"""Migrations live beside their tables' owners; one list of folders; one version order across them."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import db
from services.migrations import MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]


def test_versions_are_ordered_across_folders_and_unique(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "001_core.sql").write_text("")
    (a / "201_index.sql").write_text("")
    (b / "150_store.sql").write_text("")
    assert [(v, p.name) for v, p in db.migration_files([a, b])] == \
        [(1, "001_core.sql"), (150, "150_store.sql"), (201, "201_index.sql")]
    (b / "001_again.sql").write_text("")
    with pytest.raises(ValueError, match="two migrations with version 1"):
        db.migration_files([a, b])
    with pytest.raises(FileNotFoundError):
        db.migration_files([tmp_path / "missing"])
    (a / "notes.sql").write_text("")
    with pytest.raises(ValueError, match="NNN_name.sql"):
        db.migration_files([a])


def test_every_sql_file_of_the_tree_is_in_a_listed_folder_beside_its_owner():
    listed = {p.resolve() for p in MIGRATIONS}
    found = {p.parent.resolve() for top in ("core", "projections", "services") for p in (ROOT / top).rglob("*.sql")}
    assert found == listed
    where = {p.name: p.parent.relative_to(ROOT).as_posix() for _, p in db.migration_files(MIGRATIONS)}
    assert where["001_core.sql"] == where["201_dispatch_share_index.sql"] == "projections/migrations"
    assert where["100_sites.sql"] == "services/sitedata/migrations"
    assert {where[n] for n in ("101_datasets.sql", "150_retries.sql", "151_adder_pending.sql")} == \
        {"services/reactors/migrations"}
    assert where["200_dispatcher.sql"] == "services/gateway/migrations"
    assert where["002_projection_dead_letters.sql"] == "projections/migrations"
    assert where["190_service_dead_letters.sql"] == "services/dead_letters/migrations"
    assert where["003_payloads.sql"] == "core/migrations"


def test_migrate_needs_the_folders():
    with pytest.raises(TypeError):
        db.migrate("postgresql://unused/db")   # no default list in core: callers go through services.migrations
