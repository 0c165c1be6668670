"""Harvester's side of PanDA: its instances, workers (and which jobs they run), statistics, dialogs,
metrics, and the commands waiting for it. The tables are this package's (store.py, migrations/); the
gateway's /api/v1/harvester routes (services/gateway/harvester.py) and the worker killer (killer.py) use them."""
