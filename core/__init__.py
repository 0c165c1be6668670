"""The small, explicit core: configuration, the state machine, the ledger, the Kafka bus, the database layer."""
