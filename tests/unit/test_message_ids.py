"""Command and event ids: unique, also across a fork and whatever seeds the random module's shared generator."""

from __future__ import annotations

import os
import random

import pytest

from schemas.messages import new_id


def test_ids_do_not_follow_the_shared_random_generator():
    random.seed(1234)
    first = [new_id() for _ in range(3)]
    random.seed(1234)   # a test framework seeding the shared generator must not make ids repeat
    second = [new_id() for _ in range(3)]
    assert len(set(first + second)) == 6
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_id()   # the parent's generator is in use before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: its next id, to the parent
        os.write(w, new_id().encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    assert len(child) == 32
    assert child != new_id()
