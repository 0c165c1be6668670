"""Read models: PostgreSQL tables derived from panda.job-events, each with its own Kafka position.

Writing: ``runner`` feeds the log to ``jobs``, ``files`` and ``archive`` (rows and position in one
transaction). Reading, for everyone else: ``queries`` (blocking) and ``aqueries`` (asyncio) by name,
``wait`` (the one way to wait until the jobs projection has reached an event), ``jobview.JobReader``
(a reconnecting reader for the services) and ``candidates`` (getJob's selection, pure SQL).
"""
