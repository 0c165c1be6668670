"""Drives the real panda-client 2.2.0 against a pandaes gateway; run in a subprocess by test_real_clients.py.

The environment names the gateway (PANDA_URL, PANDA_URL_SSL, PANDACACHE_URL, PANDA_BEHIND_REAL_LB) and,
for an identity, PANDA_AUTH=oidc with PANDA_AUTH_VO and PANDA_AUTH_ID_TOKEN. Prints one JSON object with
what each client call returned, as the client hands it to its caller. ``kill PANDAID…`` only kills;
``task JEDITASKID`` lists the task's jobs and kills the task.
"""

from __future__ import annotations

import json
import sys

from pandaclient import Client
from pandaclient.FileSpec import FileSpec
from pandaclient.JobSpec import JobSpec

TRF = "http://pandaserver-doma.cern.ch:25080/trf/user/payload.sh"


def job(site: str, n: int) -> JobSpec:
    j = JobSpec()
    j.jobDefinitionID = 1
    j.jobName = f"client.test.job.{n}"
    j.transformation = TRF
    j.jobParameters = f"hello 5 0 out.{n}.txt"
    j.prodSourceLabel = "user"
    j.currentPriority = 1000
    j.computingSite = site
    j.destinationDBlock = "test.out"
    j.destinationSE = "LOCAL_DISK"
    j.VO = "test"
    j.coreCount = 1
    log = FileSpec()
    log.lfn = f"log.client.{n}.tgz"
    log.type = "log"
    log.dataset = "test.log"
    log.destinationDBlock = "test.log"
    log.destinationSE = "LOCAL_DISK"
    log.scope = "test"
    j.addFile(log)
    return j


def describe(specs):
    if specs is None:
        return None
    return [None if s is None else {"PandaID": s.PandaID, "jobStatus": s.jobStatus, "jobName": s.jobName,
                                    "computingSite": s.computingSite, "prodUserID": s.prodUserID,
                                    "specialHandling": s.specialHandling,
                                    "files": [[f.lfn, f.type] for f in s.Files]} for s in specs]


def main(site: str) -> None:
    out: dict = {}
    out["hello"] = list(Client.hello())
    status, submitted = Client.submitJobs([job(site, 1), job(site, 2)])
    out["submitJobs"] = [status, submitted]
    ids = [row[0] for row in submitted] + [987654321]
    status, specs = Client.getJobStatus(ids)
    out["getJobStatus"] = [status, describe(specs)]
    status, specs = Client.getFullJobStatus(ids)
    out["getFullJobStatus"] = [status, describe(specs)]
    out["setDebugMode"] = list(Client.setDebugMode(ids[1], True, False))
    out["killJobs"] = list(Client.killJobs(ids[:1]))
    print("RESULT " + json.dumps(out, default=str))


def kill(ids: list[int]) -> None:
    print("RESULT " + json.dumps({"killJobs": list(Client.killJobs(ids))}, default=str))


def task(task_id: int) -> None:
    """JEDI's task calls through panda-client: the task's PandaIDs, then killTask."""
    out = {"getPandaIDsWithTaskID": list(Client.getPandaIDsWithTaskID(task_id)),
           "killTask": list(Client.killTask(task_id))}
    print("RESULT " + json.dumps(out, default=str))


if __name__ == "__main__":
    if sys.argv[1] == "kill":   # client_script.py kill PANDAID...
        kill([int(a) for a in sys.argv[2:]])
    elif sys.argv[1] == "task":   # client_script.py task JEDITASKID
        task(int(sys.argv[2]))
    else:                       # client_script.py SITE
        main(sys.argv[1])
