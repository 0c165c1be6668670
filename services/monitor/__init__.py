"""The monitor: a read-only web UI over the projections and the archived events (services/monitor/app.py)."""
