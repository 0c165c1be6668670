"""The typed sections of the configuration: one Struct per ``[section]`` of ``core/defaults.toml``.

Why typed: a component reads ``cfg.watcher.heartbeat_timeout`` as a float it can rely on, editors and
type checkers see every setting, and a value of the wrong type is refused when the configuration is
loaded (naming the setting) instead of failing deep inside a component. The defaults themselves stay in
``defaults.toml`` (one place, with their comments); every key there must have a field here and the
other way round, which ``config.load`` checks.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class StateSettings(_Section):
    """[state]"""

    dir: str


class KafkaSettings(_Section):
    """[kafka]"""

    bootstrap: str
    partitions: int
    commands_topic: str
    events_topic: str
    rejected_topic: str
    replies_topic: str
    reply_partitions: int
    group_prefix: str
    linger_ms: int
    fetch_max_wait_ms: int
    urgent_fetch_max_wait_ms: int
    ledger_fetch_max_wait_ms: int
    gap_fetch_max_wait_ms: int
    idle_after_ms: int
    idle_fetch_max_wait_ms: int
    max_poll_records: int
    max_poll_interval_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    stuck_after_s: float
    transaction_timeout_ms: int
    max_message_bytes: int
    client: str
    embedded_threads: int


class DbSettings(_Section):
    """[db]"""

    url: str
    database: str
    pool_size: int


class LedgerSettings(_Section):
    """[ledger]"""

    final_jobs_kept: int
    gather_ms: int
    gather_from: int
    local_replies: bool
    local_commands: bool
    local_events: bool
    local_events_gather_ms: int


class ProjectionsSettings(_Section):
    """[projections]"""

    archive_after: float
    archive_every: float
    archive_batch: int
    idle_fetch_max_wait_ms: int


class HttpSettings(_Section):
    """[http]"""

    host: str
    port: int


class GatewaySettings(_Section):
    """[gateway]"""

    db_pool_size: int
    claim_pool_size: int
    verdict_timeout: float
    cache_max_bytes: int
    default_queues: list[str]
    max_body_bytes: int
    submit_max_jobs: int
    inline_payload_bytes: int
    monitor_origin: str
    replies: bool
    binding_memory: int
    direct_dispatch: bool
    processes: int
    linger_ms: int


class DispatcherSettings(_Section):
    """[dispatcher]"""

    dispatch_timeout: float
    claim_ttl: float
    sent_ttl: float
    deliver_grace: float
    sweep_period: float
    sweep_batch: int
    lock_wait: float
    max_attempts: int
    max_jobs: int
    share_order: list[str]


class WatcherSettings(_Section):
    """[watcher]"""

    period: float
    batch: int
    heartbeat_timeout: float
    heartbeat_timeout_analysis: float
    sent_timeout: float
    holding_timeout: float
    holding_timeout_analysis: float
    defined_timeout: float
    defined_max_age: float
    activated_timeout: float
    activated_timeout_jedi: float
    pending_timeout: float
    waiting_timeout: float
    throttled_timeout: float
    starting_timeout: float
    active_max_age: float


class AdderSettings(_Section):
    """[adder]"""

    retry_delay: float
    max_delay: float
    lease: float
    projection_wait: float
    merge_tag: str
    tick: float


class CloserSettings(_Section):
    """[closer]"""

    tick: float


class FinisherSettings(_Section):
    """[finisher]"""

    period: float
    transfer_timeout_hi: float
    transfer_timeout_lo: float
    batch: int


class RetrySettings(_Section):
    """[retry]"""

    enabled: bool
    default_max_attempt: int
    max_attempts: int
    no_retry: list[str]
    memory_errors: list[str]
    memory_factor: float
    memory_increment: int
    max_ram: int


class DaemonSettings(_Section):
    """[daemon]"""

    n_proc: int
    proc_lifetime: float
    scripts: list[str]
    configurator: str
    configurator_period: float
    closer_period: float
    cache_cleanup_period: float
    cache_lifetime: float
    cluster_lock: bool


class PluginsSettings(_Section):
    """[plugins]"""

    default: str
    vo_map: list[str]
    local_root: str
    local_transfer_delay: float
    local_strict_outputs: bool
    dummy_inputs_local: bool


class SitesSettings(_Section):
    """[sites]"""

    file: str
    period: float
    cache_ttl: float


class SetupperSettings(_Section):
    """[setupper]"""

    configure_at_start: bool
    job_wait: float
    sweep_every: float
    sweep_after: float
    sweep_batch: int


class ActivatorSettings(_Section):
    """[activator]"""

    period: float
    batch: int
    resend_after: float
    idle_period: float


class ReactorsSettings(_Section):
    """[reactors]"""

    services: list[str]
    projector: bool


class MetricsSettings(_Section):
    """[metrics]"""

    enabled: bool
    host: str
    port: int


class LogSettings(_Section):
    """[log]"""

    format: str
    level: str


class MonitorSettings(_Section):
    """[monitor]"""

    host: str
    port: int
    db_pool_size: int
    gateway_url: str
    live_idle_fetch_max_wait_ms: int


class AuthSettings(_Section):
    """[auth]"""

    enabled: bool
    dev_issuer: bool
    dev_vo: str
    issuers: list[str]
    groups_claim: str
    role_map: list[str]
    default_roles: list[str]
    leeway: float
    jwks_cache_seconds: float
    trusted_proxies: list[str]
    dn_headers: list[str]
    fqans_header: str
    tls_cert: str
    tls_key: str


class CredsSettings(_Section):
    """[creds]"""

    dir: str


SECTIONS: dict[str, type[_Section]] = {
    "state": StateSettings,
    "kafka": KafkaSettings,
    "db": DbSettings,
    "ledger": LedgerSettings,
    "projections": ProjectionsSettings,
    "http": HttpSettings,
    "gateway": GatewaySettings,
    "dispatcher": DispatcherSettings,
    "watcher": WatcherSettings,
    "adder": AdderSettings,
    "closer": CloserSettings,
    "finisher": FinisherSettings,
    "retry": RetrySettings,
    "daemon": DaemonSettings,
    "plugins": PluginsSettings,
    "sites": SitesSettings,
    "setupper": SetupperSettings,
    "activator": ActivatorSettings,
    "reactors": ReactorsSettings,
    "metrics": MetricsSettings,
    "log": LogSettings,
    "monitor": MonitorSettings,
    "auth": AuthSettings,
    "creds": CredsSettings,
}
