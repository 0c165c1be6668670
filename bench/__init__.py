"""`pandaes bench`: seeded workloads measured against the ceilings of the broker and database they run on.

Each workload module has one job (``ceilings``, ``rebuild``, ``kill``, ``dispatch``, ``lifecycle``) and
returns a plain dict of figures; ``bench.run`` orders them, ``bench.report`` prints, saves and plots.
"""
