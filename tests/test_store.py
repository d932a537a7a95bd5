"""One contract for every store of the node's shared state (app/store/), run over the SQLite file of a node and a
real Redis server (Debian's redis-server, in the e2e set), as the `limits` library tests each of its storages."""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.store import OverQuota, Quota, StoreError
from app.store.redis import RedisStore
from app.store.sqlite import CHECKPOINT, PURGE_EVERY, SqliteStore
from tests.support import log_lines


@pytest.fixture(params=("sqlite", pytest.param("redis", marks=pytest.mark.e2e)))
def store(request, tmp_path):
    """A store of each backend, empty."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "store.sqlite3")
    return RedisStore(request.getfixturevalue("redis_server").url)


def test_the_first_add_of_a_key_wins_and_a_second_finds_it(store):
    assert store.add("k", "first", 60)
    assert not store.add("k", "second", 60)
    assert store.get("k") == "first"
    assert store.get("other") is None


def test_an_expired_record_is_gone_and_makes_way(store):
    assert store.add("k", "old", 0.001)
    deadline = time.monotonic() + 5
    while store.get("k") is not None:  # the moment it expires is the store's
        assert time.monotonic() < deadline
    assert store.add("k", "new", 60)
    assert store.get("k") == "new"


def test_a_swap_replaces_only_the_record_it_names(store):
    store.add("k", "first", 60)
    assert not store.swap("k", "not this one", "second", 60)
    assert store.swap("k", "first", "second", 60)
    assert store.get("k") == "second"
    assert store.swap("k", "second", None, 60)  # None removes it
    assert store.get("k") is None
    assert not store.swap("k", "second", "third", 60)  # nothing there to replace


def test_a_settle_lands_without_anyone_waiting_for_it(store):
    """A claim's outcome after its delivery: the request answers before it is written, and it is written even when
    no other claim comes to carry it."""
    store.add("delivered", "pending", 60)
    store.add("refused", "pending", 60)
    store.settle("delivered", "pending", "delivered", 60)
    store.settle("refused", "pending", None, 60)  # None removes it
    deadline = time.monotonic() + 10
    while store.get("delivered") != "delivered" or store.get("refused") is not None:
        assert time.monotonic() < deadline


def test_many_threads_claiming_at_once_each_get_their_own_answer(store):
    """Each thread of a busy process learns whether its own claim was stored, found one in force, or met a full
    quota."""
    def claim(n: int) -> str:
        try:
            return "stored" if store.add(f"k{n % 20}", f"record-{n}", 60, [quota(limit=15)]) else "in force"
        except OverQuota:
            return "over"

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(claim, range(40)))
    # 20 keys twice each; the quota lets 15 claims through, the keys of the 5 refused stay free and are refused again
    assert answers.count("stored") == 15 and answers.count("in force") == 15 and answers.count("over") == 10


def test_concurrent_adds_of_one_key_let_exactly_one_through(store):
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda n: store.add("k", f"record-{n}", 60), range(16)))
    assert won.count(True) == 1


def test_check_reaches_the_store(store):
    store.check()


def test_a_store_that_cannot_be_reached_raises_store_error(tmp_path):
    missing = SqliteStore(tmp_path / "no-such-folder" / "store.sqlite3")
    with pytest.raises(StoreError):
        missing.check()
    with pytest.raises(StoreError):
        RedisStore("redis://127.0.0.1:1/0").check()


def test_expired_claims_are_purged_as_new_ones_are_made(tmp_path):
    store = SqliteStore(tmp_path / "claims.sqlite3")
    for number in range(40):
        assert store.add(f"old-{number}", "{}", -1)  # expired as soon as written
    assert store.get("old-0") is None and store.add("old-0", "{}", 60)  # an expired claim makes way at once
    for number in range(PURGE_EVERY):  # every few writes remove the expired rows
        store.add(f"new-{number}", "{}", 60)
    rows = sqlite3.connect(tmp_path / "claims.sqlite3").execute("SELECT key FROM claims").fetchall()
    assert sorted(key for (key,) in rows) == sorted([*(f"new-{n}" for n in range(PURGE_EVERY)), "old-0"])


def test_a_busy_nodes_store_file_stays_a_few_megabytes(tmp_path):
    """Forms arriving without a pause (a flood, a benchmark): the write-ahead log is copied into the file and
    started again as it goes, instead of growing by every claim's pages (seen: 770 MB after 4 s)."""
    store = SqliteStore(tmp_path / "claims.sqlite3")

    def claim(number: int) -> int:
        store.add(f"form-{number}", "pending", 600, [quota(limit=10**6)])
        store.settle(f"form-{number}", "pending", "delivered", 600)
        return sum(path.stat().st_size for path in tmp_path.glob("claims.sqlite3*"))

    for number in range(5000):
        claim(number)
    deadline = time.monotonic() + 10  # the log starts again once the settler had its turn: forms go on meanwhile
    while claim(number := number + 1) > 32 * 2**20:
        assert time.monotonic() < deadline


def test_a_checkpoint_kept_from_the_write_lock_is_a_warning_and_the_store_goes_on(tmp_path, caplog):
    """Another process holds the node's write lock past the timeout while a checkpoint is due: the operator reads
    why the log was not copied this time, and the next claims and settles are written as ever."""
    path = tmp_path / "claims.sqlite3"
    store = SqliteStore(path)
    store.add("k", "pending", 60)
    other = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT)
    with caplog.at_level(logging.WARNING, logger="app"):
        fcntl.flock(other, fcntl.LOCK_EX)
        try:
            store._settler.put(CHECKPOINT)  # as after every CHECKPOINT_EVERY writes
            deadline = time.monotonic() + 10
            while not log_lines(caplog, "dedup_store_error"):
                assert time.monotonic() < deadline
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
            os.close(other)
    [line] = log_lines(caplog, "dedup_store_error")
    assert line["level"] == "WARNING" and line["operation"] == "checkpoint" and "write lock" in line["reason"]
    assert store.add("k2", "pending", 60)
    store.settle("k", "pending", "delivered", 60)
    deadline = time.monotonic() + 10
    while store.get("k") != "delivered":
        assert time.monotonic() < deadline


def test_the_first_claims_on_a_new_store_never_find_it_locked(tmp_path):
    """A node's first forms: two worker threads open the new SQLite file at the same moment (a double click saw
    'database is locked': SQLite answers a concurrent switch to WAL at once, without waiting)."""
    for round_ in range(100):
        store = SqliteStore(tmp_path / f"claims-{round_}.sqlite3")
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(store.add, ("k0", "k1"), ("{}", "{}"), (60, 60))) == [True, True]


def test_a_new_process_reads_the_store_while_another_holds_a_write_open(tmp_path):
    """A worker stopped in the middle of a claim (or a disk that stalls) holds the file's write lock: another
    worker's first look at a claim and the probe's check still read at once, as a write-ahead log lets readers do."""
    path = tmp_path / "claims.sqlite3"
    SqliteStore(path).add("k", "delivered", 60)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        later = SqliteStore(path)  # as in a worker started meanwhile: no connection of its own yet
        assert later.get("k") == "delivered"
        later.check()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def quota(limit: int = 3, period: float = 3600, key: str = "client:203.0.113.7") -> Quota:
    return Quota("client", key, limit, period)


def test_a_quota_counts_up_to_its_limit_then_says_when_it_has_room(store):
    for _ in range(3):
        store.count([quota()])
    with pytest.raises(OverQuota) as over:
        store.count([quota()])
    assert over.value.quota == quota() and 3590 < over.value.retry_after <= 3600
    store.count([quota(key="client:198.51.100.1")])  # another address has its own count


def test_a_claim_counts_its_quotas_once_and_a_duplicate_counts_nothing(store):
    assert store.add("form", "first", 60, [quota(limit=2)])
    assert not store.add("form", "again", 60, [quota(limit=2)])  # a duplicate: not counted
    assert store.add("other", "second", 60, [quota(limit=2)])
    with pytest.raises(OverQuota):
        store.add("third", "refused", 60, [quota(limit=2)])
    assert store.get("third") is None  # over a quota: nothing stored


def test_a_full_quota_counts_none_of_the_others(store):
    sender = Quota("sender", "sender:ana@example.com", 5, 3600)
    store.count([quota(limit=1)])
    with pytest.raises(OverQuota) as over:
        store.count([sender, quota(limit=1)])
    assert over.value.quota.name == "client"
    for _ in range(5):  # the refused form did not count for the sender
        store.count([sender])


def test_concurrent_counts_never_get_past_a_quota(store):
    def count(_: int) -> bool:
        try:
            store.count([quota(limit=5)])
            return True
        except OverQuota:
            return False

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(count, range(24))).count(True) == 5


def test_the_window_moves(store):
    store.count([quota(limit=1, period=0.3)])
    deadline = time.monotonic() + 10
    while True:  # room again once the count leaves the window
        try:
            store.count([quota(limit=1, period=0.3)])
            break
        except OverQuota as over:
            assert over.retry_after <= 0.3 and time.monotonic() < deadline
