"""Request ids come from a pool of random base62 characters drawn ahead (one system call per
many ids), after the time: they must still be well formed, all different, in the order they
were made, and a forked child must draw its own."""

from __future__ import annotations

import os
import re
import time
from unittest import mock

from keyhouse.api.http import new_request_id
from keyhouse.ids import BASE62, pooled_base62, time_ordered


def test_pooled_ids_are_base62_and_distinct() -> None:
    ids = [new_request_id() for _ in range(5000)]  # many refills of the pool
    assert all(re.fullmatch(r"req_[0-9A-Za-z]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert set("".join(ids)) - {"r", "e", "q", "_"} <= set(BASE62)
    assert len(set("".join(i[12:] for i in ids))) == 62  # every character turns up


def test_request_ids_sort_in_the_order_they_were_made() -> None:
    """The usage table's unique index takes them at its end, not on a random page."""
    start = time.time_ns()
    made = []
    for step in range(0, 62**3 * 1_000_000, 7_777_777_777):  # ms, seconds, hours apart
        with mock.patch("keyhouse.ids.time.time_ns", return_value=start + step):
            made += [time_ordered(24), time_ordered(24)]
    assert len(set(made)) == len(made)
    stamps = [i[:8] for i in made]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(made) // 2
    assert sorted(made[::2]) == made[::2]


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    pooled_base62(24)  # the pool is full now, in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.close(read)
        os.write(write, pooled_base62(24).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 24
    assert child != pooled_base62(24)
