"""Unit tests for schemas.jobspec: PanDA's attribute tables and every wire form of a job.

The positional client format is unforgiving (one shifted attribute corrupts every later one), so the tests pin
the order independently of the module (indices taken from a captured panda-client request) and round-trip
every single attribute.
"""

import json
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import msgspec
import pytest

from schemas.jobspec import (
    CLIENT_FILE_ATTRIBUTES,
    FILE_ATTRIBUTES,
    JOB_ATTRIBUTES,
    LIMIT_LENGTH,
    NULL,
    ZERO_ATTRS,
    FileSpec,
    JobSpec,
    SpecError,
    decode_job,
    encode_job,
    job_from_dict,
    job_to_description,
    job_to_dict,
    jobs_from_client_json,
    jobs_to_client_json,
    limit_lengths,
)

# The start of the jobs string panda-client 2.2.0 actually posted (PANDA-CLIENTS §6.4, unescaped, truncated
# where the capture was truncated).
OBSERVED_PREFIX = (
    '[["NULL", 1, "NULL", "NULL", "NULL", "vm", "NULL", "NULL", "NULL", '
    '"http://pandaserver-doma.cern.ch:25080/trf/user/payload.sh", "NULL", "NULL", "user", "NULL", "NULL", '
    '1000, "NULL", "NULL", "NULL", "client.test.job", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", '
    '"NULL", '
    '"NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", '
    '"NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "TEST_QUEUE", "NULL", "hello 5 0 out.txt", '
    '"NULL", "NULL", "NULL", "test.out", "LOCAL_DISK", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", '
    '"NULL", "NULL", "NULL", "N'
)
OBSERVED_FILE_STATE = [
    "NULL", "NULL", "NULL", "log.client.tgz", "log", "test.log", "NULL", "NULL", "NULL", "NULL", "NULL",
    "test.log", "NULL", "LOCAL_DISK", "NULL", "NULL", "NULL", "test", None,
]  # fmt: skip


def client_dumps(states: list[Any]) -> str:
    """Serialise like panda-client does (stdlib json, datetimes as _datetime_object markers)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return {"_datetime_object": obj.strftime("%Y-%m-%d %H:%M:%S.%f")}
        raise TypeError(obj)

    return json.dumps(states, default=default)


def observed_state() -> list[Any]:
    """The captured submission, rebuilt with indices read off the capture (not from JOB_ATTRIBUTES)."""
    state: list[Any] = [NULL] * 126
    state[1] = 1
    state[5] = "vm"
    state[9] = "http://pandaserver-doma.cern.ch:25080/trf/user/payload.sh"
    state[12] = "user"
    state[15] = 1000
    state[19] = "client.test.job"
    state[47] = "TEST_QUEUE"
    state[49] = "hello 5 0 out.txt"
    state[53] = "test.out"
    state[54] = "LOCAL_DISK"
    state[69] = "test"  # VO: set in the capture, value past the truncation point
    state[80] = 1  # coreCount
    return [*state, [list(OBSERVED_FILE_STATE)]]


def _base(struct: type[msgspec.Struct], name: str) -> type:
    (ftype,) = (f.type for f in msgspec.structs.fields(struct) if f.name == name)
    (base,) = (t for t in get_args(ftype) if t is not type(None))
    return getattr(base, "__origin__", base)   # Int32/Int64 are Annotated[int, Meta(range)]


def sample_value(struct: type[msgspec.Struct], name: str, i: int) -> Any:
    """A distinct non-None value of the field's type."""
    base = _base(struct, name)
    if base is int:
        return 1000 + i
    if base is float:
        return i + 0.25
    if base is datetime:
        return datetime(2025, 1, 2, 3, 4, 5, 678900) + timedelta(seconds=i)
    return f"{name}-value"


def full_job() -> JobSpec:
    """A job with all 126 attributes set and two files with every client-visible attribute set."""
    kwargs = {name: sample_value(JobSpec, name, i) for i, name in enumerate(JOB_ATTRIBUTES)}
    files = [
        FileSpec(**{name: sample_value(FileSpec, name, i + k) for i, name in enumerate(FILE_ATTRIBUTES[:18])})
        for k in range(2)
    ]
    return JobSpec(**kwargs, Files=files)


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------


def test_attribute_counts_and_order() -> None:
    assert len(JOB_ATTRIBUTES) == 126 == len(set(JOB_ATTRIBUTES))
    assert len(CLIENT_FILE_ATTRIBUTES) == 18
    assert len(FILE_ATTRIBUTES) == 22
    assert JOB_ATTRIBUTES[0] == "PandaID"
    assert JOB_ATTRIBUTES[1] == "jobDefinitionID"
    assert JOB_ATTRIBUTES[15] == "currentPriority"
    assert JOB_ATTRIBUTES[18] == "jobStatus"
    assert JOB_ATTRIBUTES[47] == "computingSite"
    assert JOB_ATTRIBUTES[-1] == "outputFileType"
    assert CLIENT_FILE_ATTRIBUTES[0] == "rowID" and FILE_ATTRIBUTES[0] == "row_ID"
    assert FILE_ATTRIBUTES[18:] == ("jediTaskID", "datasetID", "fileID", "attemptNr")
    assert CLIENT_FILE_ATTRIBUTES[1:] == FILE_ATTRIBUTES[1:18]


def test_struct_fields_match_tables() -> None:
    assert tuple(f.name for f in msgspec.structs.fields(JobSpec)) == (*JOB_ATTRIBUTES, "Files")
    assert tuple(f.name for f in msgspec.structs.fields(FileSpec)) == FILE_ATTRIBUTES
    assert JobSpec() == JobSpec(Files=[])
    assert _base(JobSpec, "creationTime") is datetime
    assert _base(JobSpec, "currentPriority") is int
    assert _base(JobSpec, "schedulerID") is str
    assert _base(FileSpec, "fsize") is int


def test_constants() -> None:
    assert len(ZERO_ATTRS) == 20 and set(ZERO_ATTRS) <= set(JOB_ATTRIBUTES)
    assert "currentPriority" in ZERO_ATTRS and "taskBufferErrorCode" in ZERO_ATTRS
    assert set(LIMIT_LENGTH) <= set(JOB_ATTRIBUTES)
    assert LIMIT_LENGTH["pilotErrorDiag"] == 500
    assert LIMIT_LENGTH["taskBufferErrorDiag"] == 300
    assert LIMIT_LENGTH["jobSubStatus"] == 80
    assert LIMIT_LENGTH["sourceSite"] == LIMIT_LENGTH["destinationSite"] == 36


# ----------------------------------------------------------------------------------------------------
# panda-client job/submit
# ----------------------------------------------------------------------------------------------------


def test_observed_body_parses() -> None:
    text = client_dumps([observed_state()])
    assert text.startswith(OBSERVED_PREFIX)  # our rebuild really is the captured request
    (job,) = jobs_from_client_json(text)
    assert job.PandaID is None
    assert job.jobDefinitionID == 1
    assert job.creationHost == "vm"
    assert job.transformation == "http://pandaserver-doma.cern.ch:25080/trf/user/payload.sh"
    assert job.prodSourceLabel == "user"
    assert job.currentPriority == 1000
    assert job.jobName == "client.test.job"
    assert job.computingSite == "TEST_QUEUE"
    assert job.jobParameters == "hello 5 0 out.txt"
    assert job.destinationDBlock == "test.out"
    assert job.destinationSE == "LOCAL_DISK"
    assert job.VO == "test"
    assert job.coreCount == 1
    assert job.jobStatus is None and job.creationTime is None
    set_attrs = {n for n in JOB_ATTRIBUTES if getattr(job, n) is not None}
    assert len(set_attrs) == 12
    (f,) = job.Files
    assert f == FileSpec(
        lfn="log.client.tgz", type="log", dataset="test.log", destinationDBlock="test.log",
        destinationSE="LOCAL_DISK", scope="test",
    )  # fmt: skip
    # ... and it goes back out exactly as the client wrote it.
    assert json.loads(jobs_to_client_json([job])) == json.loads(text)


def test_bytes_input_and_empty_list() -> None:
    assert jobs_from_client_json(client_dumps([observed_state()]).encode())[0].jobName == "client.test.job"
    assert jobs_from_client_json("[]") == []


def test_round_trip_every_attribute() -> None:
    job = full_job()
    text = jobs_to_client_json([job, JobSpec()])
    raw = json.loads(text)
    assert len(raw[0]) == 127
    assert all(v != NULL and v is not None for v in raw[0][:126])  # every position carries a value
    assert len(raw[0][126]) == 2 and len(raw[0][126][0]) == 19 and raw[0][126][0][-1] is None
    assert raw[1] == [NULL] * 126 + [[]]
    back = jobs_from_client_json(text)
    assert back == [job, JobSpec()]
    for name in JOB_ATTRIBUTES:  # explicit, so a failure names the attribute
        assert getattr(back[0], name) == getattr(job, name), name


def test_client_encoded_job_round_trips() -> None:
    """A job serialised by (an emulation of) the client parses to the same values."""
    job = full_job()
    state = [getattr(job, n) for n in JOB_ATTRIBUTES]
    files = [[getattr(f, n) for n in FILE_ATTRIBUTES[:18]] + [None] for f in job.Files]
    assert jobs_from_client_json(client_dumps([[*state, files]])) == [job]


def test_server_only_file_attributes_are_not_in_client_format() -> None:
    job = JobSpec(Files=[FileSpec(lfn="a", jediTaskID=5, fileID=7, datasetID=8, attemptNr=1)])
    assert jobs_from_client_json(jobs_to_client_json([job])) == [JobSpec(Files=[FileSpec(lfn="a")])]


def test_datetimes() -> None:
    state: list[Any] = [NULL] * 126 + [[]]
    state[JOB_ATTRIBUTES.index("creationTime")] = {"_datetime_object": "2025-03-04 05:06:07.089000"}
    state[JOB_ATTRIBUTES.index("startTime")] = {"_datetime_object": "2025-03-04 05:06:07"}  # no fraction
    state[JOB_ATTRIBUTES.index("endTime")] = "2025-03-04T05:06:07+02:00"  # ISO with offset -> naive UTC
    state[JOB_ATTRIBUTES.index("stateChangeTime")] = {"__datetime__": "2025-03-04T05:06:07.000001"}
    (job,) = jobs_from_client_json(json.dumps([state]))
    assert job.creationTime == datetime(2025, 3, 4, 5, 6, 7, 89000)
    assert job.startTime == datetime(2025, 3, 4, 5, 6, 7)
    assert job.endTime == datetime(2025, 3, 4, 3, 6, 7)
    assert job.stateChangeTime == datetime(2025, 3, 4, 5, 6, 7, 1)
    raw = json.loads(jobs_to_client_json([job]))[0]
    assert raw[JOB_ATTRIBUTES.index("creationTime")] == {"_datetime_object": "2025-03-04 05:06:07.089000"}
    assert raw[JOB_ATTRIBUTES.index("startTime")] == {"_datetime_object": "2025-03-04 05:06:07.000000"}
    # what panda-client's decoder does with the marker
    marker = raw[JOB_ATTRIBUTES.index("creationTime")]["_datetime_object"]
    revived = datetime.strptime(marker, "%Y-%m-%d %H:%M:%S.%f")
    assert revived == job.creationTime


def test_aware_datetime_normalised_to_naive_utc() -> None:
    aware = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    job = job_from_dict({"creationTime": aware})
    assert job.creationTime == datetime(2025, 1, 1, 17, 0)
    assert job_from_dict({"creationTime": "2025-01-01T17:00:00Z"}).creationTime == datetime(2025, 1, 1, 17, 0)
    assert job_to_dict(job)["creationTime"] == "2025-01-01T17:00:00"


def test_shorter_lists() -> None:
    # an older client: only the first three attributes, then Files
    files = [["NULL", "NULL", "guid-1", "f.txt", None]]
    (job,) = jobs_from_client_json(json.dumps([[42, 7, "sched", files]]))
    assert job.PandaID == 42 and job.jobDefinitionID == 7 and job.schedulerID == "sched"
    assert all(getattr(job, n) is None for n in JOB_ATTRIBUTES[3:])
    assert job.Files == [FileSpec(GUID="guid-1", lfn="f.txt")]
    # only the Files list
    assert jobs_from_client_json("[[[]]]") == [JobSpec()]
    # 125 attributes + Files: the newest attribute is unset
    (job,) = jobs_from_client_json(json.dumps([[NULL] * 124 + ["x86-64-v3", []]]))
    assert job.cpu_architecture_level == "x86-64-v3" and job.outputFileType is None


def test_numeric_coercion() -> None:
    state: list[Any] = [NULL] * 126 + [[list(OBSERVED_FILE_STATE)]]
    state[JOB_ATTRIBUTES.index("currentPriority")] = "1000"
    state[JOB_ATTRIBUTES.index("PandaID")] = 5001.0
    state[JOB_ATTRIBUTES.index("attemptNr")] = " -3 "
    state[JOB_ATTRIBUTES.index("cpuConversion")] = "1.5"
    state[JOB_ATTRIBUTES.index("hs06sec")] = 12
    state[JOB_ATTRIBUTES.index("transExitCode")] = 0  # varchar column: a number becomes its text
    state[JOB_ATTRIBUTES.index("jobsetID")] = ""  # empty string in a numeric column is NULL
    state[-1][0][CLIENT_FILE_ATTRIBUTES.index("fsize")] = "24"
    (job,) = jobs_from_client_json(json.dumps([state]))
    assert job.currentPriority == 1000 and job.PandaID == 5001 and job.attemptNr == -3
    assert job.cpuConversion == 1.5 and job.hs06sec == 12.0 and isinstance(job.hs06sec, float)
    assert job.transExitCode == "0"
    assert job.jobsetID is None
    assert job.Files[0].fsize == 24


def _state_with(name: str, value: Any) -> str:
    """Two jobs, the second with ``name`` set to ``value``: errors must name job 1, not job 0."""
    good: list[Any] = [NULL] * 126 + [[]]
    bad = list(good)
    bad[JOB_ATTRIBUTES.index(name)] = value
    return json.dumps([good, bad])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("currentPriority", "abc"),
        ("currentPriority", {"x": 1}),
        ("currentPriority", True),
        ("currentPriority", 1.5),
        ("currentPriority", [1]),
        ("PandaID", 2**70),
        ("jobName", {"a": "b"}),
        ("jobName", False),
        ("cpuConversion", "1,5"),
        ("creationTime", "yesterday"),
        ("creationTime", {"when": "now"}),
        ("creationTime", 1700000000),
        ("outputFileType", ["x"]),
    ],
)
def test_rejects_wrong_type(name: str, value: Any) -> None:
    with pytest.raises(SpecError, match=rf"job 1: {name}: expected") as exc:
        jobs_from_client_json(_state_with(name, value))
    assert exc.value.job_index == 1 and exc.value.field == name


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"jobs": []}', "expected a JSON list of jobs"),
        ("[", "invalid JSON"),
        ('"NULL"', "expected a JSON list of jobs"),
        ('[{"PandaID": 1}]', "job 0: expected a list"),
        ("[[]]", "job 0: empty"),
        ('[[1, 2, "NULL"]]', "job 0: Files: the last element must be the list"),
        (json.dumps([[NULL] * 127 + [[]]]), "job 0: too many values: 127"),
        ('[[["not a list"]]]', r"job 0: Files\[0\]: expected a list"),
        ("[[[[]]]]", r"job 0: Files\[0\]: empty"),
        (json.dumps([[[[NULL] * 19 + [None]]]]), r"job 0: Files\[0\]: too many values"),
        (json.dumps([[[[NULL] * 14 + ["big", None]]]]), r"job 0: Files\[0\]\.fsize: expected"),
        (json.dumps([[[[{"x": 1}, None]]]]), r"job 0: Files\[0\]\.rowID: expected an integer"),
    ],
)
def test_rejects_bad_structure(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        jobs_from_client_json(text)


def test_error_message_truncates_huge_values() -> None:
    with pytest.raises(SpecError) as exc:
        jobs_from_client_json(_state_with("currentPriority", "x" * 10000))
    assert "currentPriority" in str(exc.value) and len(str(exc.value)) < 300


# ----------------------------------------------------------------------------------------------------
# job/get_description
# ----------------------------------------------------------------------------------------------------


def test_job_to_description() -> None:
    job = JobSpec(
        PandaID=5001, jobDefinitionID=1, creationHost="vm", jobStatus="defined",
        creationTime=datetime(2025, 5, 6, 7, 8, 9, 123), cpuConversion=1.25,
        Files=[FileSpec(row_ID=9, lfn="log.client.tgz", type="log", fsize=0, jediTaskID=77)],
    )  # fmt: skip
    d = job_to_description(job)
    assert set(d) == {*JOB_ATTRIBUTES, "Files"} and len(d) == 127
    assert list(d)[:126] == list(JOB_ATTRIBUTES)
    assert d["PandaID"] == 5001 and d["schedulerID"] == NULL and d["jobStatus"] == "defined"
    assert d["creationTime"] == {"__datetime__": "2025-05-06T07:08:09.000123"}
    assert d["modificationTime"] == NULL
    assert d["cpuConversion"] == 1.25
    (fd,) = d["Files"]
    assert set(fd) == {*FILE_ATTRIBUTES, "rowID"}
    assert fd["rowID"] == fd["row_ID"] == 9
    assert fd["fsize"] == 0 and fd["jediTaskID"] == 77 and fd["GUID"] == NULL
    # the client picks its 18 file slots by name: all present
    assert all(k in fd for k in CLIENT_FILE_ATTRIBUTES)

    # JSON-serialisable, and the client's object hook revives the datetime
    def hook(obj: dict[str, Any]) -> Any:
        return datetime.fromisoformat(obj["__datetime__"]) if "__datetime__" in obj else obj

    revived = json.loads(json.dumps(d), object_hook=hook)
    assert revived["creationTime"] == job.creationTime
    # and we can read our own reply back
    assert job_from_dict(d) == job


def test_job_to_description_of_full_job_round_trips() -> None:
    job = full_job()
    d = job_to_description(job)
    assert all(d[n] != NULL for n in JOB_ATTRIBUTES)
    assert job_from_dict(json.loads(json.dumps(d))) == job


# ----------------------------------------------------------------------------------------------------
# By-name form
# ----------------------------------------------------------------------------------------------------


def test_job_dict_round_trip() -> None:
    job = full_job()
    d = job_to_dict(job)
    assert d["creationTime"] == job.creationTime.isoformat()
    assert job_from_dict(json.loads(json.dumps(d))) == job
    assert job_to_dict(JobSpec()) == {"Files": []}
    assert job_from_dict({}) == JobSpec()


def test_job_from_dict_values() -> None:
    job = job_from_dict(
        {
            "jobName": "j", "currentPriority": "900", "jobStatus": NULL,
            "creationTime": "2025-01-02T03:04:05",
            "Files": [{"lfn": "a.txt", "type": "input", "fsize": "10", "rowID": 4}],
        }
    )  # fmt: skip
    assert job.jobName == "j" and job.currentPriority == 900 and job.jobStatus is None
    assert job.creationTime == datetime(2025, 1, 2, 3, 4, 5)
    assert job.Files == [FileSpec(lfn="a.txt", type="input", fsize=10, row_ID=4)]
    assert job_from_dict({"Files": None}) == JobSpec()


def test_job_from_dict_unknown_keys_suggest() -> None:
    with pytest.raises(SpecError) as exc:
        job_from_dict({"jobname": "x", "currentPriorty": 3, "zzzqqq": 1}, index=3)
    msg = str(exc.value)
    assert msg.startswith("job 3: unknown attribute(s)")
    assert "'jobname' (did you mean 'jobName'?)" in msg
    assert "'currentPriorty' (did you mean 'currentPriority'?)" in msg
    assert "'zzzqqq'" in msg and "'zzzqqq' (did" not in msg
    with pytest.raises(SpecError, match=r"Files\[0\] attribute\(s\): 'lfnn' \(did you mean 'lfn'\?\)"):
        job_from_dict({"Files": [{"lfnn": "a"}]})


@pytest.mark.parametrize(
    ("d", "fragment"),
    [
        ("notadict", "expected an object"),
        ({"currentPriority": "abc"}, "job 0: currentPriority: expected an integer"),
        ({"creationTime": "soon"}, "job 0: creationTime: expected a datetime"),
        ({"Files": "x"}, "job 0: Files: expected a list"),
        ({"Files": [1]}, r"job 0: Files\[0\]: expected an object"),
        ({"Files": [{"fsize": "big"}]}, r"job 0: Files\[0\]\.fsize: expected an integer"),
        ({"Files": [{"rowID": 1, "row_ID": 2}]}, "disagrees"),
    ],
)
def test_job_from_dict_rejects(d: Any, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        job_from_dict(d)


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def test_limit_lengths() -> None:
    job = JobSpec(
        pilotErrorDiag="p" * 600, taskBufferErrorDiag="t" * 301, grid="g" * 50, jobSubStatus="s" * 81,
        jobParameters="j" * 5000, sourceSite="x" * 40,
    )  # fmt: skip
    out = limit_lengths(job)
    assert out is not job
    assert out.pilotErrorDiag == "p" * 500
    assert out.taskBufferErrorDiag == "t" * 300
    assert out.grid == "g" * 50  # at the limit: untouched
    assert out.jobSubStatus == "s" * 80
    assert out.sourceSite == "x" * 36
    assert out.jobParameters == "j" * 5000  # not a limited attribute
    assert job.pilotErrorDiag == "p" * 600  # original unchanged
    assert limit_lengths(JobSpec()) == JobSpec()
    for name, limit in LIMIT_LENGTH.items():
        long = limit_lengths(JobSpec(**{name: "z" * (limit + 5)}))
        assert getattr(long, name) == "z" * limit, name


def test_encode_decode_job() -> None:
    job = full_job()
    data = encode_job(job)
    assert isinstance(data, bytes)
    assert decode_job(data) == job
    assert decode_job(data.decode()) == job
    assert encode_job(JobSpec()) == b"{}"  # unset attributes are omitted
    assert json.loads(encode_job(JobSpec(PandaID=1, Files=[FileSpec(lfn="a")]))) == {
        "PandaID": 1,
        "Files": [{"lfn": "a"}],
    }


@pytest.mark.parametrize(
    "data",
    [b'{"PandaID": "x"}', b'{"nope": 1}', b'{"Files": [{"nope": 1}]}', b"[", b"[]"],
)
def test_decode_job_rejects(data: bytes) -> None:
    with pytest.raises(SpecError, match="invalid encoded JobSpec"):
        decode_job(data)
