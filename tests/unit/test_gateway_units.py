"""Pure parts of the gateway and dispatcher: no broker, no database."""

from __future__ import annotations

import pytest

from projections.candidates import candidate_query, label_filter
from services.gateway.dispatcher import DispatchRequest
from services.gateway.jobdict import pilot_job
from services.gateway.params import BadRequest
from services.gateway.updates import legacy_names, parse_time, translate


def test_label_rules_follow_panda():
    assert label_filter(None, None, None, None)[1] == {"labels": ["managed", "test", "prod_test", "install"]}
    assert label_filter("user", None, None, None)[1] == {"labels": ["user", "panda", "install"]}
    # a queue in test status turns managed pilots into test pilots
    assert label_filter("managed", None, None, "test") == ("j.prod_source_label = %(label)s", {"label": "test"})
    assert "gangarobot" in label_filter("managed", "CE", None, "test")[0]
    assert label_filter("ptest", None, None, None) == ("j.prod_source_label = %(label)s", {"label": "ptest"})


def test_candidate_query_filters():
    sql, params = candidate_query(DispatchRequest(site="Q", memory=2000, disk=500, remaining_time=3600,
                                                  resource_type="MCORE", core_count=8, task_id=5), ["Test"])
    for fragment in ("min_ram_count <= %(memory)s", "max_disk_count <= %(disk)s", "max_walltime <= %(remaining)s",
                     "resource_type = %(resource_type)s", "COALESCE(j.core_count, 1) <= %(cores)s",
                     "jedi_task_id = %(task_id)s", "SKIP LOCKED", "current_priority DESC, j.pandaid"):
        assert fragment in sql
    assert params["site"] == "Q" and params["memory"] == 2000 and params["limit"] == 1
    bare, _ = candidate_query(DispatchRequest(site="Q"), [])
    assert "min_ram_count" not in bare and "resource_type =" not in bare


def test_translate_legacy_and_v1_fields():
    upd = translate({"jobId": "12", "state": "finished", "attemptNr": "2", "pilotErrorCode": "-1144",
                     "startTime": "1795375577.0047703", "endTime": "2026-11-22 19:30:00", "node": "wn",
                     "coreCount": "8", "jobMetrics": "coreCount=8 leak=12 chi2=0.5", "totRBYTES": "4096",
                     "xml": '{"a": {}}', "metaData": "{}", "timestamp": "x", "cpuConsumptionTime": "7.9"})
    assert upd.panda_id == 12 and upd.attempt_nr == 2 and upd.report == '{"a": {}}' and upd.metadata == "{}"
    a = upd.attrs
    assert a["pilotErrorCode"] == 1144 and a["modificationHost"] == "wn" and a["actualCoreCount"] == 8
    assert a["startTime"].startswith("2026-11-22T") and a["endTime"] == "2026-11-22T19:30:00"
    assert a["memory_leak"] == 12 and a["memory_leak_x2"] == 0.5
    assert a["totRBYTES"] == 4 and a["cpuConsumptionTime"] == 7
    running = translate(legacy_names({"job_id": 3, "job_status": "running", "job_output_report": "{}"}))
    assert running.state == "running" and running.report is None
    with pytest.raises(BadRequest):
        translate({"state": "running"})
    with pytest.raises(BadRequest):
        translate({"jobId": "1", "state": "sent"})
    assert parse_time("2026-11-22T19:26:17+00:00") == "2026-11-22T19:26:17"


def test_pilot_job_format():
    spec = {"PandaID": 5, "transformation": "t", "jobParameters": "a b", "attemptNr": 1, "prodSourceLabel": "managed",
            "taskID": 77, "specialHandling": "dm"}
    files = [{"lfn": "in1", "type": "input", "GUID": "g1", "fsize": 24, "checksum": "ad:1", "scope": "s",
              "dataset": "ds.in", "dispatchDBlock": "dis"},
             {"lfn": "out1", "type": "output", "scope": "s", "dataset": "ds.out", "destinationDBlock": "sub"},
             {"lfn": "log1", "type": "log", "scope": "l", "dataset": "ds.log", "GUID": "lg"}]
    job = pilot_job(spec, files, ddm_endpoint="EP")
    assert job["jobPars"] == "a b" and job["taskID"] == 77 and job["coreCount"] == 1 and job["debug"] == "True"
    assert job["inFiles"] == "in1" and job["GUID"] == "g1" and job["fsize"] == "24" and job["checksum"] == "ad:1"
    assert job["outFiles"] == "out1,log1" and job["scopeOut"] == "s" and job["scopeLog"] == "l"
    assert job["logFile"] == "log1" and job["logGUID"] == "lg" and job["ddmEndPointOut"] == "EP,EP"
    assert job["realDatasets"] == "ds.out,ds.log" and job["destinationDblock"] == "sub,NULL"
    assert job["swRelease"] == "NULL" and job["maxCpuCount"] == 0


def test_reply_partitions_are_tried_from_the_process_id_onwards():
    from services.gateway import replies
    assert replies.order(4, 6) == [2, 3, 0, 1]
    assert replies.order(1, 12345) == [0]
    with pytest.raises(ValueError, match="0 partitions"):
        replies.order(0, 1)
    assert 0 < replies.lock_space("panda.job-replies") < 2**31


def test_bulk_rounds_keep_each_jobs_updates_in_order_and_put_jobs_side_by_side():
    from services.gateway.pilot import job_rounds

    items = [{"job_id": 1, "job_status": "running"}, {"jobId": 2}, {"job_id": 1, "job_status": "transferring"},
             "not an object", {"job_id": 3}, {"job_id": 1, "job_status": "finished"}, {"no": "id"}, {"job_id": "2"}]
    rounds = job_rounds(items)
    assert rounds == [[0, 1, 3, 4, 6], [2, 7], [5]]
    # every item once; within a job, the items' own order
    assert sorted(i for r in rounds for i in r) == list(range(len(items)))
    assert job_rounds([]) == []


def test_a_bulk_item_s_caller_is_the_verified_identity_else_the_pilot_the_item_names():
    from aiohttp.test_utils import make_mocked_request

    from services.gateway import identity
    from services.gateway.auth.model import Identity

    verified = make_mocked_request("POST", "/api/v1/pilot/update_jobs_bulk")
    verified["identity"] = Identity(principal="harvester-1", method="oidc", roles=frozenset({"pilot"}))
    of = identity.pilot_of_items(verified)
    assert {of({"pilotID": "claimed-1"}).actor, of({}).actor} == {"pilot:harvester-1"}   # item fields never count

    trusting = make_mocked_request("POST", "/api/v1/pilot/update_jobs_bulk")
    trusting["credentials"] = identity.Credentials()   # auth off, no DN or token
    of = identity.pilot_of_items(trusting)
    assert of({"pilotID": "p-1"}).actor == "pilot:p-1" and of({"node": "n-2"}).actor == "pilot:n-2"
    assert of({}).actor == "anonymous"
