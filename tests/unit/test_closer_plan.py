"""The closer's plan from what its SQL view loads: file counts, the files not settled yet, the unclosed subs."""

from __future__ import annotations

from services.reactors.closer import BlockFile, Blocks, plan


def test_a_sub_whose_files_are_all_settled_closes_from_its_count_alone():
    b = Blocks(subs={"d_sub1": ("d", "defined")}, nfiles={"d_sub1": 100_000}, siblings={"d": {"d_sub1": "defined"}})
    p = plan(b)
    assert p.close_subs == ("d_sub1",) and p.close_destinations == ("d",) and not p.fail


def test_an_empty_sub_and_an_unsettled_file_keep_blocks_open():
    b = Blocks(subs={"d_sub1": ("d", "defined"), "d_sub2": ("d", "defined")}, nfiles={"d_sub1": 0, "d_sub2": 5},
               files=[BlockFile("d_sub2", 7, "a", "unknown")],
               siblings={"d": {"d_sub1": "defined", "d_sub2": "defined"}})
    assert not plan(b)


def test_files_of_final_jobs_fail_and_the_sub_closes():
    b = Blocks(subs={"d_sub2": ("d", "defined")}, nfiles={"d_sub2": 5}, final_jobs={7},
               files=[BlockFile("d_sub2", 7, "a", "unknown")], siblings={"d": {"d_sub2": "defined"}})
    p = plan(b)
    assert [f.lfn for f in p.fail] == ["a"] and p.close_subs == ("d_sub2",) and p.close_destinations == ("d",)


def test_a_destination_whose_other_subs_are_closed_closes_with_its_last_one():
    # the view reads only unclosed subs: a destination with none left maps to {}
    b = Blocks(subs={"d_sub9": ("d", "closed")}, nfiles={"d_sub9": 3}, siblings={"d": {}})
    assert plan(b).close_destinations == ("d",)
    b.destinations = {"d": "closed"}
    assert not plan(b)


def test_the_event_path_closes_a_sub_only_when_its_counters_say_the_listed_files_are_all_that_is_open():
    # the event path lists only the files of the jobs that ended; ``unsettled`` is the sub's own count
    b = Blocks(subs={"d_sub1": ("d", "defined")}, nfiles={"d_sub1": 40}, unsettled={"d_sub1": 2}, final_jobs={7},
               files=[BlockFile("d_sub1", 7, "a", "unknown")], siblings={"d": {"d_sub1": "defined"}})
    p = plan(b)
    assert [f.lfn for f in p.fail] == ["a"] and not p.close_subs, "a file of another job is still open"
    b.unsettled = {"d_sub1": 1}
    p = plan(b)
    assert p.close_subs == ("d_sub1",) and p.close_destinations == ("d",)
    b.unsettled, b.files = {"d_sub1": 0}, []           # the job's files were all registered already
    assert plan(b).close_subs == ("d_sub1",)
