"""One adapter per Kafka client library, each implementing the port of ``core.bus``; the only modules
that import a client library. ``core.bus.adapter`` imports the configured one."""
