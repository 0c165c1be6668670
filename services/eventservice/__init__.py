"""PanDA's event service: a job's events cut into ranges that pilots/Harvester acquire and report one by one.

ranges.py is the rules (pure: how a job's ranges are defined at submission, which range status may follow
which); store.py owns the tables (migrations/); definer.py is the reactor that defines the ranges of a
submitted event-service job. The gateway's routes are services/gateway/events.py.
"""
