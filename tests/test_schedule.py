"""The schedule floor: weekly YAML periods and the DiViMS iCal feed (divims/schedule.py)."""

from __future__ import annotations

import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest

from divims.config import ScheduleConfig
from divims.schedule import (
    Floor,
    IcalFeed,
    ScheduleError,
    combine,
    ical_floor,
    parse_users,
    schedule_floor,
    weekly_floor,
)

PARIS = ZoneInfo("Europe/Paris")
WEEKLY = [
    {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "07:45", "to": "12:00", "participants": 2400},
    {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "13:30", "to": "17:00", "participants": 2000},
    {"days": ["sat"], "from": "09:00", "to": "10:00", "percent": 10},
]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS).timestamp()


@pytest.mark.parametrize("when, lead, expected", [
    ("2026-03-02T07:00", 600, None),        # Monday, before the lead
    ("2026-03-02T07:35", 600, 2400),        # one boot time before 07:45
    ("2026-03-02T07:34", 600, None),
    ("2026-03-02T11:59", 600, 2400),
    ("2026-03-02T12:00", 600, None),        # `to` is exclusive
    ("2026-03-02T13:20", 600, 2000),
    ("2026-03-02T13:20", 0, None),
    ("2026-03-07T09:30", 0, 500),           # Saturday, 10% of 5000
    ("2026-03-08T09:30", 600, None),        # Sunday: nothing
])
def test_weekly_floor(when, lead, expected):
    f = weekly_floor(WEEKLY, "Europe/Paris", at(when), lead, pool_capacity=5000)
    assert f.participants == expected
    assert f.reason


def test_weekly_floor_reads_config_models_and_says_booting_ahead():
    cfg = ScheduleConfig.model_validate({"timezone": "Europe/Paris", "weekly": WEEKLY[:1]})
    f = schedule_floor(cfg, at("2026-03-02T07:40"), 600, 5000)
    assert f.participants == 2400 and "ahead" in f.reason


def test_weekly_floor_uses_the_pool_timezone():
    # 07:50 in Paris is 06:50 UTC: same instant, same answer whatever the machine's zone
    utc = datetime(2026, 3, 2, 6, 50, tzinfo=ZoneInfo("UTC")).timestamp()
    assert weekly_floor(WEEKLY, "Europe/Paris", utc, 0, 5000).participants == 2400
    assert weekly_floor(WEEKLY, "UTC", utc, 0, 5000).participants is None


@pytest.mark.parametrize("summary, expected", [
    ("users=3000", 3000), ("Exams users=30%", 1500), ("users = 12 %", 600), ("[x] users=0", 0),
])
def test_parse_users(summary, expected):
    assert parse_users(summary, pool_capacity=5000) == expected


@pytest.mark.parametrize("summary", ["no key", "users=130%"])
def test_parse_users_rejects(summary):
    with pytest.raises(ScheduleError):
        parse_users(summary, 5000)


def ics(*events: tuple[str, str]) -> str:
    body = "".join(
        f"BEGIN:VEVENT\r\nUID:{i}@t\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start}\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\n"
        for i, (start, summary) in enumerate(events))
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n{body}END:VCALENDAR\r\n"


def test_ical_latest_started_event_in_last_7_days_wins():
    text = ics(("20260301T080000Z", "users=100"), ("20260302T060000Z", "users=40%"),
               ("20260310T060000Z", "users=9999"))
    now = datetime(2026, 3, 3, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert ical_floor(text, now, 0, 1000).participants == 400


def test_ical_event_counts_one_lead_before_it_starts():
    text = ics(("20260302T060000Z", "users=10"), ("20260302T070000Z", "users=20"))
    before = datetime(2026, 3, 2, 6, 52, tzinfo=ZoneInfo("UTC")).timestamp()
    assert ical_floor(text, before, 0, 1000).participants == 10
    assert ical_floor(text, before, 600, 1000).participants == 20


def test_ical_nothing_in_the_last_week():
    text = ics(("20260101T060000Z", "users=10"))
    now = datetime(2026, 3, 2, 6, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    f = ical_floor(text, now, 0, 1000)
    assert f.participants is None and "7 days" in f.reason


def test_ical_garbage_is_a_schedule_error_and_never_stops_the_weekly_floor():
    with pytest.raises(ScheduleError):
        ical_floor("not a calendar", 0, 0, 1000)
    cfg = ScheduleConfig.model_validate({"weekly": WEEKLY[:1]})
    f = schedule_floor(cfg, at("2026-03-02T08:00"), 0, 5000, ics_text="garbage")
    assert f.participants == 2400


def test_combine_takes_the_largest_known():
    assert combine(Floor(None, "a"), Floor(5, "b"), Floor(7, "c")).participants == 7
    assert combine(Floor(None, "a"), Floor(None, "b")).reason == "a; b"


class _Feed:
    def __init__(self, body: str):
        self.body = body
        self.status = 200
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(outer.body.encode())
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pool.ics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_ical_feed_caches_and_falls_back_to_the_cached_copy(tmp_path):
    body = ics(("20260302T060000Z", "users=10"))
    feed = _Feed(body)
    try:
        cache = tmp_path / "cache" / "pool.ics"
        f = IcalFeed(feed.url, str(cache), timeout_seconds=2, tries=1)
        assert f.read() == (body, "")
        assert cache.read_bytes() == body.encode()
        feed.status = 500
        text, note = f.read()
        assert text == body and "cached" in note
    finally:
        feed.close()
    nocache = IcalFeed(feed.url, str(tmp_path / "none.ics"), timeout_seconds=1, tries=1)
    text, note = nocache.read()
    assert text is None and "no cached copy" in note


def test_ical_feed_reads_a_file_path(tmp_path):
    p = tmp_path / "x.ics"
    p.write_text("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")
    assert IcalFeed(str(p), None).read()[1] == ""
