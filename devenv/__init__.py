"""Developer bootstrap: what a laptop, CI or a demo runs pandaes on (embedded Tansu broker, local or embedded
PostgreSQL, the endpoints file) and the orchestrator that starts them (``stack.Infra``). Production points
pandaes at a real Kafka and PostgreSQL instead, and never imports this package."""
