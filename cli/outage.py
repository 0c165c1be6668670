"""Turning "the database or the broker is not there" into one line for the person at the terminal.

Why: every command reaches PostgreSQL or Kafka, and a traceback of a refused connection tells an operator
less than one sentence naming what is unreachable and where it was looked for. Only outage errors are
translated; anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import psycopg

# the Kafka clients' own error classes, by name: the command line does not import a Kafka client
_KAFKA_ERRORS = frozenset({"KafkaError", "KafkaException", "NoBrokersAvailable", "KafkaTimeoutError", "AdminError",
                           "BrokerUnreachable"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def describe(exc: BaseException) -> str | None:
    """One line for an outage error, or None if ``exc`` is something else."""
    if isinstance(exc, psycopg.OperationalError):
        return f"the database is unreachable ({_first_line(exc)}); is PostgreSQL running? [db] url / PANDAES_DB"
    if any(cls.__name__ in _KAFKA_ERRORS for cls in type(exc).__mro__):
        return (f"the Kafka broker is unreachable ({type(exc).__name__}: {_first_line(exc)}); is it running? "
                "[kafka] bootstrap / PANDAES_KAFKA")
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"a connection failed ({type(exc).__name__}: {_first_line(exc)}); are the broker and database running?"
    return None
