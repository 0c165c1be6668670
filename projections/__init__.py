"""Read models: PostgreSQL tables derived from panda.job-events, each with its own Kafka position."""
