"""The scale-out shard board: exclusive claims (threads and processes racing), a silent worker's
shard taken over, a shard lost too often marked failed, and the parent's view of it all."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from selfexplain.leases import ShardBoard

STALE = 11.0


def board(tmp_path, n=4, **kw) -> ShardBoard:
    kw = {"stale_after_s": STALE, "max_attempts": 2, **kw}
    return ShardBoard.create(tmp_path / "board", [{"features": str(i)} for i in range(n)], **kw)


def age(path, seconds: float) -> None:
    """Make a lease look silent for `seconds`."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_claims_go_in_order_and_never_twice(tmp_path):
    shards = board(tmp_path, 3)
    claims = [shards.claim(f"w{i}") for i in range(3)]
    assert [c.index for c in claims] == [0, 1, 2]
    assert all(c.attempt == 1 for c in claims)
    assert shards.claim("w3") is None  # all held by live workers
    status = shards.status()
    assert status.leased == [0, 1, 2] and not status.settled
    shards.finish(claims[1])
    assert shards.claim("w3") is None  # done is never handed out again
    assert shards.status().done == [1]


def test_a_silent_lease_is_taken_over_and_counted(tmp_path):
    shards = board(tmp_path, 2)
    first = shards.claim("a")
    age(first.lease, STALE + 1)
    assert shards.status().leased == []  # the parent no longer counts it as held
    again = shards.claim("b")
    assert (again.index, again.attempt) == (0, 2)
    assert shards.attempts(0) == 1
    # the first worker was only slow: it finishes too; the shard is done once, not twice
    shards.finish(first)
    assert shards.claim("c").index == 1
    assert shards.status().done == [0]


def test_a_shard_lost_max_attempts_times_fails_with_its_reason(tmp_path):
    shards = board(tmp_path, 1, max_attempts=2)
    for _ in range(2):
        age(shards.claim("x").lease, STALE + 1)
    assert shards.claim("y") is None
    status = shards.status()
    assert status.settled and list(status.failed) == [0]
    assert "died 2 times" in status.failed[0]


def test_a_failed_shard_is_left_and_reported(tmp_path):
    shards = board(tmp_path, 2)
    claim = shards.claim("w")
    shards.fail(claim, "InputError: no such model")
    assert not claim.lease.exists()
    assert shards.claim("v").index == 1
    assert shards.status().failed == {0: "InputError: no such model"}


def test_a_held_lease_stays_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr("selfexplain.leases.TOUCH_SECONDS", 0.05)
    shards = board(tmp_path, 1)
    claim = shards.claim("w")
    age(claim.lease, STALE - 1)
    with shards.held(claim):
        time.sleep(0.3)
    assert time.time() - claim.lease.stat().st_mtime < 1


def test_threads_racing_for_one_stale_lease_give_it_to_one(tmp_path):
    shards = board(tmp_path, 1, max_attempts=5)
    age(shards.claim("dead").lease, STALE + 1)
    won: list[object] = []
    start = threading.Barrier(8)

    def grab(i: int) -> None:
        start.wait()
        if (claim := shards.claim(f"t{i}")) is not None:
            won.append(claim)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and shards.attempts(0) == 1


def _claim_all(folder: str, owner: str, out) -> None:
    shards = ShardBoard(folder)
    while (claim := shards.claim(owner)) is not None:
        out.put(claim.index)
        shards.finish(claim)


def test_processes_share_the_shards_without_overlap(tmp_path):
    shards = board(tmp_path, 40)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(shards.folder), f"p{i}", out))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = [out.get(timeout=5) for _ in range(40)]
    assert sorted(got) == list(range(40))  # each shard once
    assert shards.status().settled and len(shards.status().done) == 40


@pytest.mark.parametrize("kw, match", [({"stale_after_s": 10}, "twice"),
                                       ({"max_attempts": 0}, "at least 1")])
def test_bad_board_settings(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        board(tmp_path, **kw)
    with pytest.raises(ValueError, match="at least one shard"):
        ShardBoard.create(tmp_path / "b", [], stale_after_s=STALE, max_attempts=1)
