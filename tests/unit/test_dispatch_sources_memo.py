"""Dispatcher._sources: the candidate SQL of a request shape built once, the same as claim_sources builds it."""

from __future__ import annotations

import pytest

from core import config
from projections.candidates import claim_sources
from services.gateway import leases
from services.gateway.dispatcher import Dispatcher, DispatchRequest


def test_a_request_shape_is_built_once_and_equals_claim_sources(monkeypatch):
    cfg = config.load()
    dispatcher = Dispatcher(cfg, None, None)   # type: ignore[arg-type]  # no query is made
    req = DispatchRequest(site="SITE", node="wn1", prod_source_label="managed", memory=2000)
    first = dispatcher._sources(req, "skip")
    assert dispatcher._sources(DispatchRequest(site="SITE", node="wn1", prod_source_label="managed", memory=2000),
                               "skip") is first
    ctes, union, params = claim_sources(req, dispatcher.share_order, 1, leases=leases.RELATION)
    assert first[:2] == (ctes, union) and dict(first[2]) == params
    assert dispatcher._sources(req, "wait") is not first          # each locking its own statement
    with pytest.raises(TypeError):
        first[2]["site"] = "OTHER"   # type: ignore[index]  # shared by every claim of that shape: read-only
    monkeypatch.setattr(Dispatcher, "SOURCE_MEMO", 3)
    for i in range(10):
        dispatcher._sources(DispatchRequest(site=f"S{i}"), "skip")
    assert len(dispatcher._source_memo) <= 3


def test_requests_differing_only_in_what_the_candidates_do_not_depend_on_share_a_shape():
    """The group claim (claim_group.py) puts requests of one shape into one statement: the pilot's node, batch
    id, job count and time budget are not part of it; anything the candidate query reads is."""
    a = DispatchRequest(site="SITE", node="wn1", prod_source_label="managed", memory=2000, n_jobs=3, timeout=20,
                        scheduler_id="harvester-1")
    b = DispatchRequest(site="SITE", node="wn2", prod_source_label="managed", memory=2000)
    assert Dispatcher._shape(a) == Dispatcher._shape(b)
    assert Dispatcher._shape(a) != Dispatcher._shape(DispatchRequest(site="SITE", node="wn1",
                                                                     prod_source_label="managed", memory=4000))
    assert Dispatcher._shape(a) != Dispatcher._shape(DispatchRequest(site="OTHER", prod_source_label="managed",
                                                                     memory=2000))
