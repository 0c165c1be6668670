"""The credential store's pure rules: nothing without a store, names stay inside it, proxies per role."""

from __future__ import annotations

import pytest

from services.gateway.creds import NOT_CONFIGURED, Refused, proxy_refusal, read_secret


def test_nothing_is_served_without_a_store():
    with pytest.raises(Refused, match="no credential store"):
        read_secret(None, "proxy", "production")
    assert "nothing is served" in NOT_CONFIGURED


def test_names_stay_inside_the_store(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "pub.pem").write_text("PUB")
    (tmp_path / "secret").write_text("S")
    assert read_secret(tmp_path, "keys", "pub.pem") == "PUB"
    for bad in ("../secret", ".hidden", "a/b", "", ".."):
        with pytest.raises(Refused, match="invalid name"):
            read_secret(tmp_path, "keys", bad)
    with pytest.raises(Refused, match="no key 'missing'"):
        read_secret(tmp_path, "keys", "missing")


def test_a_proxy_goes_to_holders_of_its_role():
    prod = frozenset({"user", "production"})
    assert proxy_refusal(prod, "op", "production", None) is None
    assert proxy_refusal(prod, "op", "production", "op") is None
    assert "missing role" in proxy_refusal(prod, "op", "pilot", None)
    assert "another DN" in proxy_refusal(prod, "op", "production", "/CN=other")
    assert proxy_refusal(frozenset({"admin"}), "root", "pilot", "/CN=other") is None
    assert proxy_refusal(None, None, "pilot", None) is None   # authentication off: every caller is trusted
