"""The embedded broker's environment: Tansu's option variables dropped, its runtime's threads from the configuration."""

from __future__ import annotations

from devenv.broker import tansu_env


def test_the_configured_threads_replace_a_stray_setting_and_options_are_dropped():
    outside = {"PATH": "/bin", "TOKIO_WORKER_THREADS": "7", "STORAGE_ENGINE": "s3://elsewhere/", "LISTENER_URL": "x"}
    env = tansu_env(1, outside)
    assert env["TOKIO_WORKER_THREADS"] == "1" and env["PATH"] == "/bin" and env["NO_COLOR"] == "1"
    assert "STORAGE_ENGINE" not in env and "LISTENER_URL" not in env
    assert "TOKIO_WORKER_THREADS" not in tansu_env(0, outside)      # 0: the runtime's own default
    assert outside["TOKIO_WORKER_THREADS"] == "7"                    # the caller's mapping untouched
