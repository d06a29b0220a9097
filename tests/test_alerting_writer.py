"""The alert store's batched writes and the writer process's protocol.

- a group commit's notifications recorded together leave the same tables, and report the same kinds
  of change, as recording them one by one (generated sequences: repeats, resolutions, late retries,
  edited annotations, the same fingerprint twice in one batch);
- a combined write that fails is undone and retried one notification at a time, so only the failing
  one fails;
- WriterServer/WriterClient: the writer records what the client sends and answers with the kinds;
  a writer that hangs, dies or speaks nonsense makes the client fail with StoreError (503), never hang;
  a malformed request closes only that connection.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest
from alerting_fixtures import alert, notification
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerting.database import Database, StoreError
from alerting.payload import parse_notification
from alerting.store import AlertStore, PreparedNotification, record_prepared
from alerting.writer import WriterClient, WriterServer, _frame, listen


def _alerts(*specs):
    """specs: (fingerprint, status, description): one alert each, of one notification."""
    items = [alert("A", status=status, fingerprint=fp, ends_at=None if status == "firing" else
                   "2026-03-01T11:00:00Z") | {"annotations": {"summary": "s", "description": description}}
             for fp, status, description in specs]
    return parse_notification(notification(*items)).alerts


def _tables(path) -> list:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT fingerprint, starts_at, status, ends_at, ends_at_ts, labels, annotations,"
                            " received_at, updated_at, transitions FROM alerts ORDER BY fingerprint, starts_at"
                            ).fetchall()


notification_specs = st.lists(
    st.tuples(st.sampled_from(["f1", "f2", "f3"]), st.sampled_from(["firing", "resolved"]),
              st.sampled_from(["d1", "d2"])),
    min_size=0, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(notification_specs, min_size=1, max_size=5), min_size=1, max_size=4))
def test_recording_a_batch_together_is_recording_it_one_by_one(tmp_path_factory, batches):
    tmp = tmp_path_factory.mktemp("batch")
    together, alone = Database(tmp / "together.sqlite"), Database(tmp / "alone.sqlite")
    AlertStore(together), AlertStore(alone)
    at = 1000.0
    kinds_together, kinds_alone = [], []
    for batch in batches:
        prepared = []
        for specs in batch:
            at += 1.0
            prepared.append(PreparedNotification.of(_alerts(*specs), at))
        for result, error in together.write_batch(prepared, combine=record_prepared):
            assert error is None
            kinds_together.append(result)
        for p in prepared:
            ((result, error),) = alone.write_batch([p])
            assert error is None
            kinds_alone.append(result)
    assert kinds_together == kinds_alone
    assert _tables(together.path) == _tables(alone.path)
    together.close()
    alone.close()


def test_a_failing_combined_write_is_retried_one_by_one_and_fails_alone(tmp_path):
    db = Database(tmp_path / "w.sqlite")
    store = AlertStore(db)
    good = [PreparedNotification.of(_alerts((f"g{i}", "firing", "d")), 100.0 + i) for i in range(3)]
    bad = PreparedNotification(101.5, (("not", "a", "row"),))  # unpacks wrongly: a bug in that one
    outcomes = db.write_batch([good[0], good[1], bad, good[2]], combine=record_prepared)
    assert [error is None for _, error in outcomes] == [True, True, False, True]
    assert [result for result, _ in outcomes if result is not None] == [["new"], ["new"], ["new"]]
    assert store.count() == 3 and store.transition_count() == 3


@pytest.fixture
def writer(tmp_path):
    """A WriterServer on a Unix socket, served by a thread of this process."""
    db = Database(tmp_path / "w.sqlite")
    AlertStore(db)
    sock = listen(str(tmp_path / "writer.sock"))
    server = WriterServer(db, sock)
    stopping = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stopping,), daemon=True)
    thread.start()
    yield str(tmp_path / "writer.sock"), db, server
    stopping.set()
    thread.join(5)
    sock.close()
    db.close()


def test_the_writer_records_what_workers_send_and_answers_the_kinds(writer, tmp_path):
    path, db, server = writer
    client = WriterClient(path, timeout=5)
    store = AlertStore(db, writer=client)
    alerts = _alerts(("w1", "firing", "d"), ("w2", "firing", "d"))
    results: list = [None] * 8

    def record(i: int) -> None:
        results[i] = [c.kind for c in store.record(alerts, 100.0 + i)]

    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [["new", "new"]] + [["unchanged", "unchanged"]] * 7
    assert store.count() == 2 and store.transition_count() == 2
    assert server.notifications == 8 and 1 <= server.batches <= 8
    store.ping()
    client.close()


def test_a_malformed_request_closes_only_that_connection(writer):
    path, _, server = writer
    with socket.socket(socket.AF_UNIX) as bad:
        bad.connect(path)
        bad.sendall((12).to_bytes(4, "big") + b"not marshal!")
        bad.settimeout(5)
        assert bad.recv(10) == b""  # closed by the writer
    with socket.socket(socket.AF_UNIX) as huge:
        huge.connect(path)
        huge.sendall((1 << 31).to_bytes(4, "big"))
        huge.settimeout(5)
        assert huge.recv(10) == b""
    client = WriterClient(path, timeout=5)
    client.ping()  # the writer still serves the others
    client.close()


def _silent_writer(path: str, answer: bytes | None = None):
    """A peer that accepts and reads but never answers (a hung writer), or answers `answer`."""
    sock = listen(path)
    peers = []

    def serve() -> None:
        while True:
            try:
                peer, _ = sock.accept()
            except OSError:
                return
            peers.append(peer)
            if answer is not None:
                peer.recv(1 << 16)
                peer.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return sock, peers


def test_a_hung_writer_fails_the_request_after_the_timeout_not_never(tmp_path):
    path = str(tmp_path / "writer.sock")
    sock, _ = _silent_writer(path)
    client = WriterClient(path, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreError, match="did not answer within"):
        client.record(PreparedNotification.of(_alerts(("h1", "firing", "d")), 1.0))
    assert time.monotonic() - started < 3
    client.close()
    sock.close()


def test_a_writer_that_is_not_running_or_dies_fails_the_request(tmp_path):
    path = str(tmp_path / "writer.sock")
    client = WriterClient(path, timeout=5, connect_seconds=0.2)
    with pytest.raises(StoreError, match="not running"):
        client.ping()
    sock, peers = _silent_writer(path)
    result: list = []

    def ask() -> None:
        try:
            client.ping()
        except StoreError as exc:
            result.append(str(exc))

    t = threading.Thread(target=ask)
    t.start()
    deadline = time.monotonic() + 5
    while not peers and time.monotonic() < deadline:
        time.sleep(0.01)
    peers[0].close()  # the writer dies with the request in flight
    sock.close()
    t.join(5)
    assert result and ("closed the connection" in result[0] or "connection failed" in result[0])


def test_a_garbled_reply_fails_the_request(tmp_path):
    path = str(tmp_path / "writer.sock")
    sock, _ = _silent_writer(path, answer=(5).to_bytes(4, "big") + b"\xff\xff\xff\xff\xff")
    client = WriterClient(path, timeout=5)
    with pytest.raises(StoreError, match="malformed reply"):
        client.ping()
    sock.close()
    assert _frame((1,))[:4] == len(_frame((1,))[4:]).to_bytes(4, "big")
