"""PanDA's job states and every legal transition, as data on one screen.

Read it like a table: ``(trigger, sources, destination)``. ``NEW`` is the pseudo-state of a PandaID
the ledger has never seen. A destination of ``None`` is an internal transition: an event is recorded
(heartbeat, a command for the pilot) but the state does not change. ``core.machine`` turns this table
into a ``transitions`` Machine; nothing else encodes the lifecycle.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's state (PanDA's ``jobStatus``). A StrEnum: equal to its string, so rows, events and SQL
    parameters need no conversion; code outside this module names states through it, never by bare string."""

    PENDING = "pending"
    DEFINED = "defined"
    ASSIGNED = "assigned"
    WAITING = "waiting"
    ACTIVATED = "activated"
    THROTTLED = "throttled"
    SENT = "sent"
    STARTING = "starting"
    RUNNING = "running"
    HOLDING = "holding"
    TRANSFERRING = "transferring"
    MERGING = "merging"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CLOSED = "closed"


class PilotState(StrEnum):
    """A state a pilot reports in updateJob (the pilot's word: PanDA's ``state`` parameter). Spelled like
    job states but not one: a job whose pilot reports ``finished`` or ``failed`` goes to ``holding``."""

    STARTING = "starting"
    RUNNING = "running"
    HOLDING = "holding"
    TRANSFERRING = "transferring"
    FINISHED = "finished"
    FAILED = "failed"


NEW = "new"

# PanDA's tables of residence: jobsDefined4 / jobsActive4 / jobsArchived4.
DEFINED_STATES = ("pending", "defined", "assigned", "waiting")
ACTIVE_STATES = ("activated", "throttled", "sent", "starting", "running", "holding", "transferring", "merging")
FINAL_STATES = ("finished", "failed", "cancelled", "closed")
STATES = DEFINED_STATES + ACTIVE_STATES + FINAL_STATES
NON_FINAL = DEFINED_STATES + ACTIVE_STATES
PILOT_OWNED = ("sent", "starting", "running")   # a pilot holds the job; kills go through commandToPilot

#           trigger            sources                                            destination
TRANSITIONS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    # submission (UserIF storeJobs / JEDI toPending / co-jumbo)
    ("submit",          (NEW,),                                                 "defined"),
    ("submit_pending",  (NEW,),                                                 "pending"),
    ("submit_waiting",  (NEW,),                                                 "waiting"),
    # reassignJobs → resetDefinedJob/resetJob
    ("reset",           ("pending", "defined", "assigned", "waiting", "activated", "throttled"), "defined"),
    # Setupper / Activator / throttling
    ("assign",          ("defined",),                                           "assigned"),
    ("wait",            ("defined",),                                           "waiting"),
    ("activate",        ("defined", "assigned", "waiting"),                     "activated"),
    ("throttle",        ("activated",),                                         "throttled"),
    ("unthrottle",      ("throttled",),                                         "activated"),
    # JobDispatcher getJob (late binding)
    ("dispatch",        ("activated",),                                         "sent"),
    ("undispatch",      ("sent",),                                              "activated"),  # verdict came too late
    # pilot updateJob (see PILOT_RULES for how a pilot state becomes one of these)
    ("pilot_starting",  ("sent",),                                              "starting"),
    ("pilot_running",   ("sent", "starting"),                                   "running"),
    ("pilot_transferring", ("sent", "starting", "running"),                     "transferring"),
    ("pilot_holding",   ("sent", "starting", "running", "transferring"),        "holding"),
    ("heartbeat",       ("starting", "running", "transferring"),                None),
    # Adder / Finisher outcomes
    ("finish",          ("holding", "transferring", "merging"),                 "finished"),
    ("transfer",        ("holding",),                                           "transferring"),
    ("merge",           ("holding",),                                           "merging"),
    ("fail",            NON_FINAL,                                              "failed"),
    ("adder_cancel",    ("holding",),                                           "cancelled"),
    # kill (DBProxy.killJob): the code decides between cancelled and closed; pilot-owned jobs only
    # get commandToPilot=tobekilled unless the kill is forced
    ("kill",            NON_FINAL,                                              "cancelled"),
    ("kill_close",      NON_FINAL,                                              "closed"),
    ("kill_signal",     PILOT_OWNED,                                            None),
    ("mark_retried",    ("failed",),                                            None),
    # commands to the pilot, debug mode, priorities: attributes only
    ("set",             NON_FINAL,                                              None),
)

# entry state of a new job (Submit.to) → the submit trigger that creates it there
SUBMIT_TRIGGERS: dict[str, str] = {dest: trig for trig, sources, dest in TRANSITIONS if sources == (NEW,) and dest}

# A job its own pilot (or Harvester) put into transferring: PanDA marks it by jobDispatcherErrorDiag
# ("set to transferring by the pilot at …") and takes the final report then; a job the SERVER put into
# transferring (the adder) answers it with alreadydone. Matched before the job's state in PILOT_RULES.
PILOT_TRANSFERRING = "transferring(pilot)"
PILOT_TRANSFER_DIAG = "set to transferring by the pilot"

# updateJob guard rules (DBProxy.updateJobStatus), first match wins.
# (current states, pilot-reported states, outcome). The outcome is a trigger of TRANSITIONS, or a
# reply to the pilot with no event: "alreadydone" (duplicate final report / job already over),
# "ignore" (stale heartbeat, answered with the job's command), "tobekilled" (job is gone).
PILOT_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("failed",),                  ("holding", "transferring", "starting", "running", "finished", "failed"),
                                                                               "alreadydone"),
    (("finished", "cancelled", "closed"), ("holding", "finished", "failed"),   "alreadydone"),
    (("finished", "cancelled", "closed"), ("starting", "running", "transferring"), "tobekilled"),
    ((PILOT_TRANSFERRING,),        ("holding", "finished", "failed"),          "pilot_holding"),
    (("transferring",),            ("holding", "finished", "failed"),          "alreadydone"),
    (("holding",),                 ("holding", "finished", "failed"),          "alreadydone"),
    (("merging",),                 STATES,                                      "ignore"),
    (("holding", "transferring"),  ("starting", "running"),                    "ignore"),
    (("transferring",),            ("transferring",),                          "heartbeat"),
    (("holding",),                 ("transferring",),                          "ignore"),
    (("running",),                 ("starting", "running"),                    "heartbeat"),  # starting: coerced
    (("starting",),                ("starting",),                              "heartbeat"),
    (("sent",),                    ("starting",),                              "pilot_starting"),
    (("sent", "starting"),         ("running",),                               "pilot_running"),
    (("sent", "starting", "running"), ("transferring",),                       "pilot_transferring"),
    (("sent", "starting", "running"), ("holding", "finished", "failed"),       "pilot_holding"),
)
PILOT_STATES = tuple(PilotState)

# Kill codes (DBProxy.killJob): code → (destination trigger, taskBufferErrorCode, jobSubStatus).
# jobSubStatus None keeps the job's own. Codes not listed behave as the default (None).
KILL_CODES: dict[int | None, tuple[str, int, str | None]] = {
    None: ("kill", 100, None),         # EC_Kill, "killed by <who>"
    2: ("kill_close", 102, "toreassign"),   # expire                        EC_Expire
    4: ("kill_close", 102, "toreassign"),   # expire in waiting             EC_Expire
    3: ("kill", 103, None),            # aborted                           EC_Aborted
    8: ("kill", 105, None),            # rebrokerage                       EC_Reassigned
    50: ("kill", 100, None),           # JEDI                              EC_Kill
    52: ("kill", 100, None),           # JEDI, forced                      EC_Kill
    51: ("kill_close", 100, "toreassign"),  # reassigned by JEDI            EC_Kill
    55: ("kill_close", 100, "taskdone"),
    60: ("kill_close", 100, None),     # pilot terminated (pilot_closed)
    10: ("kill_close", 130, None),     # fast rebrokerage                  EC_FastRebrokerage
}
FORCE_KILL_CODES = frozenset({9, 52, 99})  # archive a pilot-owned job at once instead of signalling it
RETRIED_CODE = 7                            # on a failed job: taskBufferErrorCode EC_Retried 106
EC_RETRIED = 106
