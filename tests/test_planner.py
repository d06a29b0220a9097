"""The slot-model planner and its eligibility checks (scaler/planner.py, scaler/eligibility.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from divims.model import VM, FlexibleIP, ScaleliteServer, ScaleliteState, VMState, Volume, pool_tags
from scaler import eligibility as el
from scaler.eligibility import Health, Phase, Rules
from scaler.planner import plan, replacements_in, scale_in_order
from scaler.snapshot import ActionKind as A
from scaler.snapshot import ActionRequest, Decision, Signal, Signals, SlotState, Snapshot

NOW = 1_800_000_000.0
R = Rules(max_changes_per_cycle=5, max_concurrent_clones=3, min_billed_seconds=3600,
          paid_hour_margin_seconds=180, replacements_per_hour=2)
SIGS = Signals(Signal("participants", 10.0), Signal("meetings", 1.0))


def vm(n: int, state=VMState.RUNNING, since: float = NOW - 2 * 3600 - 3500, maint: int = 0) -> VM:
    return VM(f"vm{n}", f"bbb-{n}", state, "PRO2-M", "fr-par-1", pool_tags("p", n), since, since, maintenances=maint)


def entry(n: int, state=ScaleliteState.ENABLED, online: bool = True) -> ScaleliteServer:
    return ScaleliteServer(f"sl{n}", f"https://bbb-{n}/bigbluebutton/api", "secret", state, online, 0.0)


def slot(n: int, kind: str = "serving", meetings: int = 0, participants: int = 0, **kw) -> SlotState:
    """kinds: serving, cordoned, drained (disabled, 0 meetings), idle, booting, stopped, empty."""
    base = SlotState(n, f"bbb-{n}", f"bbb-{n}")
    running = dict(meetings=meetings, participants=participants, recordings_unfinished=0, bbb_api_up=True,
                   services_healthy=True, recordings_failed=0, uptime_seconds=3600.0,
                   oldest_meeting_age_seconds=600.0 if meetings else 0.0)
    if kind == "empty":
        s = base
    elif kind == "stopped":
        s = replace(base, vm=vm(n, VMState.STOPPED), scalelite=entry(n, ScaleliteState.DISABLED, False))
    elif kind == "booting":
        s = replace(base, vm=vm(n, VMState.RUNNING, since=NOW - 120), bbb_api_up=False,
                    scalelite=entry(n, ScaleliteState.DISABLED, False), meetings=0)
    elif kind == "idle":
        s = replace(base, vm=vm(n), scalelite=entry(n, ScaleliteState.DISABLED), **running)
    elif kind == "drained":
        s = replace(base, vm=vm(n), scalelite=entry(n, ScaleliteState.DISABLED), **running)
    elif kind == "cordoned":
        s = replace(base, vm=vm(n), scalelite=entry(n, ScaleliteState.CORDONED), **running)
    else:
        s = replace(base, vm=vm(n), scalelite=entry(n), **running)
    return replace(s, **kw)


def snap(*slots: SlotState, **kw) -> Snapshot:
    return Snapshot("p", NOW, SIGS, tuple(slots), **kw)


def decision(desired: int, active: int = 0) -> Decision:
    return Decision((), desired, active)


def kinds(p) -> list[tuple[str, int | None]]:
    return [(str(a.kind), a.slot) for a in p.actions]


# --- phases and checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [
    ("empty", Phase.EMPTY), ("stopped", Phase.STOPPED), ("booting", Phase.BOOTING), ("idle", Phase.IDLE),
    ("serving", Phase.SERVING), ("cordoned", Phase.DRAINING),
])
def test_phase(kind, expected):
    assert el.phase(slot(1, kind)) == expected


def test_disabled_with_meetings_is_draining_and_maintenance_wins():
    assert el.phase(slot(1, "drained", meetings=2)) == Phase.DRAINING
    assert el.phase(slot(1, "serving", in_maintenance=True)) == Phase.MAINTENANCE


@pytest.mark.parametrize("kw, expected", [
    ({}, Health.OK),
    ({"bbb_api_up": False}, Health.UNRESPONSIVE),
    ({"scalelite": entry(1, online=False)}, Health.UNRESPONSIVE),
    ({"services_healthy": False}, Health.MALFUNCTIONING),
    ({"recordings_failed": 2}, Health.MALFUNCTIONING),
    ({"uptime_seconds": 8 * 86400.0}, Health.RECYCLE),
])
def test_health(kw, expected):
    assert el.health(slot(1, **kw), NOW, R) == expected


def test_a_young_vm_is_not_unresponsive_yet():
    s = slot(1, "booting")
    assert el.health(s, NOW, R) == Health.OK
    assert el.health(s, NOW + 400, R) == Health.UNRESPONSIVE


@pytest.mark.parametrize("check, s, ok, words", [
    (el.no_meetings, slot(1, meetings=2), False, "2 meetings"),
    (el.no_meetings, slot(1, meetings=None), False, "unknown"),
    (el.no_meetings, slot(1), True, ""),
    (el.no_unfinished_recordings, slot(1, recordings_unfinished=3), False, "3 recordings"),
    (el.no_unfinished_recordings, slot(1, recordings_unfinished=None), False, "unknown"),
    (el.not_in_maintenance, slot(1, in_maintenance=True), False, "maintenance"),
    (el.vm_settled, slot(1, vm=vm(1, VMState.STOPPING)), False, "stopping"),
])
def test_named_checks(check, s, ok, words):
    c = check(s)
    assert c.ok is ok and words in c.reason


@pytest.mark.parametrize("age, billed_ok, near_end", [
    (1800, False, False),      # half an hour: not billed enough
    (3300, False, False),      # 5 min before the end of the minimum hour
    (3500, True, True),        # 100 s before it: the minimum hour is used up
    (3700, True, False),       # just started a second paid hour
    (7100, True, True),
])
def test_billing_checks(age, billed_ok, near_end):
    s = slot(1, powered_on_at=NOW - age)
    assert el.billed_minimum_reached(s, NOW, R).ok is billed_ok
    assert el.near_paid_hour_end(s, NOW, R).ok is near_end


def test_billing_anchor_without_powered_on_at_is_the_safe_side():
    s = slot(1, vm=vm(1, since=NOW - 1000))
    assert el.billing_start(s, R) == NOW - 1000 - R.starting_estimate_seconds


def test_never_the_last_online_server():
    only = slot(1)
    assert not el.not_last_online(only, snap(only)).ok
    assert el.not_last_online(only, snap(only, slot(2))).ok


# --- scale out ---------------------------------------------------------------------------------

def test_scale_out_cheapest_first():
    s = snap(slot(1), slot(2, "empty"), slot(3, "stopped"), slot(4, "idle"), slot(5, "cordoned", meetings=3))
    p = plan(s, decision(4), R)
    assert kinds(p) == [("uncordon", 5), ("enable", 4), ("poweron", 3)]
    p = plan(s, decision(5), R)
    assert kinds(p) == [("uncordon", 5), ("enable", 4), ("poweron", 3), ("clone", 2)]


def test_booting_servers_count_and_are_enabled_only_when_bbb_answers():
    s = snap(slot(1), slot(2, "booting"), slot(3, "empty"))
    assert kinds(plan(s, decision(2), R)) == []
    ready = snap(slot(1), slot(2, "idle"), slot(3, "empty"))
    assert kinds(plan(ready, decision(2), R)) == [("enable", 2)]


def test_clones_and_changes_are_bounded_per_cycle():
    s = snap(slot(1), *(slot(n, "empty") for n in range(2, 11)))
    p = plan(s, decision(10), R)
    assert [k for k, _ in kinds(p)] == ["clone"] * 3
    assert any("clones deferred" in w for w in p.waits)
    s = snap(slot(1), *(slot(n, "stopped") for n in range(2, 11)))
    p = plan(s, decision(10), R)
    assert len(p.actions) == 5 and any("5 changes per cycle" in w for w in p.waits)


def test_a_vm_that_answers_but_has_no_scalelite_entry_is_added_then_enabled():
    s = snap(slot(1), slot(2, "idle", scalelite=None))
    p = plan(s, decision(2), R)
    assert kinds(p) == [("add_to_scalelite", 2)]
    assert any("enable after" in w for w in p.waits)


def test_crash_after_create_leaves_a_stopped_vm_that_is_powered_on_not_recloned():
    s = snap(slot(1), slot(2, "stopped", scalelite=None))
    assert kinds(plan(s, decision(2), R)) == [("poweron", 2)]


def test_the_slots_ip_is_attached_when_it_is_not():
    rules = replace(R, flexible_ips=True)
    s = snap(slot(1), slot(2, "booting", ip=FlexibleIP("ip2", "198.51.100.2", None)))
    assert ("attach_ip", 2) in kinds(plan(s, decision(2), rules))
    s = snap(slot(1), slot(2, "booting", ip=FlexibleIP("ip2", "198.51.100.2", "vm2")))
    assert ("attach_ip", 2) not in kinds(plan(s, decision(2), rules))


# --- scale in ----------------------------------------------------------------------------------

def test_scale_in_order_maintenance_then_not_running_then_fewest_meetings():
    a = slot(1, meetings=1, participants=50)
    b = slot(2, meetings=1, participants=5)
    c = slot(3, meetings=9)
    d = slot(4, meetings=9, vm=vm(4, maint=1))
    e = slot(5, meetings=4, vm=vm(5, VMState.STOPPED))
    assert [s.slot for s in scale_in_order([a, b, c, d, e], NOW, R)] == [4, 5, 2, 1, 3]


def test_scale_in_cordons_the_excess():
    s = snap(slot(1, meetings=5), slot(2, meetings=1), slot(3, meetings=3))
    p = plan(s, decision(1), R)
    assert kinds(p) == [("cordon", 2), ("cordon", 3)]


def test_terminate_only_a_drained_server_at_the_end_of_a_paid_hour_with_panic_first():
    drained = slot(2, "drained", powered_on_at=NOW - 2 * 3600 - 3500)
    p = plan(snap(slot(1), drained), decision(1), R)
    assert kinds(p) == [("panic", 2), ("terminate", 2)]
    early = replace(drained, powered_on_at=NOW - 2 * 3600 - 600)
    p = plan(snap(slot(1), early), decision(1), R)
    assert kinds(p) == [] and any("left in its paid hour" in w for w in p.waits)


@pytest.mark.parametrize("kw, words", [
    ({"meetings": 1}, "meetings still running"),
    ({"recordings_unfinished": 1}, "recordings not finished"),
    ({"recordings_unfinished": None}, "recordings unknown"),
    ({"powered_on_at": NOW - 1000}, "minimum 60"),
])
def test_terminate_waits_for_every_check(kw, words):
    s = slot(2, "cordoned", **{"powered_on_at": NOW - 3500, **kw})
    p = plan(snap(slot(1), s), decision(1), R)
    assert ("terminate", 2) not in kinds(p) and any(words in w for w in p.waits)


def test_over_long_meetings_on_a_draining_server_are_ended():
    s = slot(2, "cordoned", meetings=1, oldest_meeting_age_seconds=601 * 60.0)
    assert ("end_meeting", 2) in kinds(plan(snap(slot(1), s), decision(1), R))
    s = replace(s, oldest_meeting_age_seconds=599 * 60.0)
    assert ("end_meeting", 2) not in kinds(plan(snap(slot(1), s), decision(1), R))


def test_the_last_online_server_is_never_cordoned():
    p = plan(snap(slot(1, meetings=3)), decision(0), R)
    assert kinds(p) == []


def test_maintenance_slots_are_left_alone():
    m = slot(2, "drained", in_maintenance=True, powered_on_at=NOW - 3500)
    p = plan(snap(slot(1), m, slot(3, "empty")), decision(3), R)
    assert all(a.slot != 2 for a in p.actions) and any("maintenance" in w for w in p.waits)
    assert kinds(p) == [("clone", 3)]


# --- health ------------------------------------------------------------------------------------

def test_unresponsive_is_cordoned_replaced_then_terminated():
    bad = slot(2, bbb_api_up=False, meetings=3)
    p = plan(snap(slot(1), bad, slot(3, "empty")), decision(2), R)
    assert kinds(p) == [("cordon", 2), ("clone", 3)]
    cordoned = replace(bad, scalelite=entry(2, ScaleliteState.CORDONED, online=False))
    p = plan(snap(slot(1), cordoned, slot(3, "booting")), decision(2), R)
    assert ("terminate", 2) in kinds(p) and replacements_in(p) == 1


def test_replacement_budget_stops_a_clone_fail_clone_loop():
    broken = slot(2, "booting", vm=vm(2, since=NOW - 900))
    s = snap(slot(1), broken, slot(3, "empty"))
    p = plan(s, decision(2), R, replacements_last_hour=2)
    assert kinds(p) == [] and any("budget" in w for w in p.waits)
    p = plan(s, decision(2), R, replacements_last_hour=0)
    assert ("terminate", 2) in kinds(p)


def test_malfunctioning_is_replaced_only_when_capacity_allows():
    sick = slot(2, services_healthy=False)
    p = plan(snap(slot(1), sick, slot(3, "empty")), decision(2), R)
    assert kinds(p) == [("clone", 3)]
    p = plan(snap(slot(1), sick, slot(3, "idle")), decision(2), R)
    assert kinds(p) == [("enable", 3), ("cordon", 2)]


# --- crash recovery from the Snapshot alone ------------------------------------------------------

def test_strays_orphans_and_entries_without_vm_are_cleaned_up():
    stray = vm(2)
    s = snap(slot(1), slot(2), slot(3, "empty", scalelite=entry(3)),
             stray_vms=(replace(stray, id="dup"),), orphan_volumes=(Volume("vol9", "sbs_volume"),))
    p = plan(s, decision(2), R)
    got = [(str(a.kind), a.slot, a.server_id) for a in p.actions]
    assert ("terminate", None, "dup") in got
    assert ("delete_volume", None, "vol9") in got
    assert ("panic", 3, "sl3") in got
    assert ("clone", 3) not in kinds(p)


def test_a_cordon_request_cordons_that_server():
    s = snap(slot(1), slot(2), requests=(ActionRequest(5, "cordon_server", server="bbb-2"),))
    p = plan(s, decision(2), R)
    assert [(str(a.kind), a.slot, a.request_id) for a in p.actions] == [("cordon", 2, 5)]


def test_plan_is_pure_and_every_action_says_why():
    s = snap(slot(1), slot(2, "empty"), slot(3, "cordoned", meetings=1))
    a, b = plan(s, decision(3), R), plan(s, decision(3), R)
    assert a == b and all(x.reason for x in a.actions)
    assert {x.kind for x in a.actions} <= set(A)


# --- the replacement budget is counted within a cycle ------------------------------------------------

def _failed_clone(n: int) -> SlotState:
    """A new clone whose BBB never answered: no Scalelite entry, running for 15 min."""
    return slot(n, "booting", vm=vm(n, since=NOW - 900), scalelite=None)


@pytest.mark.parametrize("last_hour, unresponsive_serving, expected_terminated", [
    (0, 0, 2),   # 3 failed clones, budget 2: 2 terminated, not 3
    (1, 0, 1),   # 1 left
    (2, 0, 0),   # spent
    (0, 1, 1),   # the cordon of an unresponsive serving server spends one of the 2 first
    (0, 2, 0),
])
def test_each_replacement_counts_against_the_budget_within_the_cycle(last_hour, unresponsive_serving,
                                                                      expected_terminated):
    serving = [slot(n, bbb_api_up=False) for n in range(5, 5 + unresponsive_serving)]
    s = snap(slot(1), _failed_clone(2), _failed_clone(3), _failed_clone(4), *serving)
    p = plan(s, decision(1 + 3 + unresponsive_serving), replace(R, max_changes_per_cycle=20),
             replacements_last_hour=last_hour)
    terminated = [a.slot for a in p.actions if a.kind == A.TERMINATE]
    assert len(terminated) == expected_terminated, kinds(p)
    assert [a.slot for a in p.actions if a.kind == A.CORDON] == [n for n, _ in enumerate(serving, 5)]
    if expected_terminated < 3:
        assert any("budget" in w for w in p.waits), p.waits


@pytest.mark.parametrize("sick, budget_left, expected_cordoned", [(3, 2, 2), (3, 1, 1), (1, 2, 1), (2, 0, 0)])
def test_malfunctioning_replacements_are_counted_not_just_gated(sick, budget_left, expected_cordoned):
    bad = [slot(n, services_healthy=False) for n in range(2, 2 + sick)]
    spare = [slot(n, "idle") for n in range(10, 10 + sick)]
    p = plan(snap(slot(1), *bad, *spare), decision(1 + sick), replace(R, max_changes_per_cycle=20),
             replacements_last_hour=R.replacements_per_hour - budget_left)
    cordoned = [a for a in p.actions if a.kind == A.CORDON and a.reason.startswith("replaced")]
    assert len(cordoned) == expected_cordoned, kinds(p)
    assert replacements_in(p) == expected_cordoned


# --- a flapping server ---------------------------------------------------------------------------

FLAP = {"vm2": NOW - 60}  # vm2 was seen unresponsive a minute ago


@pytest.mark.parametrize("kind, others, flapped, expected", [
    # answering again, cordoned: a clone brings the capacity, the flapper stays cordoned (drains)
    ("cordoned", [slot(3, "empty")], FLAP, [("clone", 3)]),
    ("drained", [slot(3, "empty")], FLAP, [("clone", 3)]),
    # a stopped VM is powered on rather than the flapper re-enabled
    ("cordoned", [slot(3, "stopped")], FLAP, [("poweron", 3)]),
    # capacity short (no other slot): the flapper is still usable
    ("cordoned", [], FLAP, [("uncordon", 2)]),
    ("drained", [], FLAP, [("enable", 2)]),
    # unresponsive long ago (outside the flap window) or never: the cheapest first, as before
    ("cordoned", [slot(3, "empty")], {"vm2": NOW - R.flap_window_seconds - 1}, [("uncordon", 2)]),
    ("cordoned", [slot(3, "empty")], None, [("uncordon", 2)]),
])
def test_a_flapping_server_is_not_re_enabled_while_other_capacity_can_come(kind, others, flapped, expected):
    p = plan(snap(slot(1), slot(2, kind), *others), decision(2), R, flapped=flapped)
    assert [k for k in kinds(p) if k[0] != "terminate" and k[0] != "panic"] == expected, kinds(p)


def test_a_serving_flapper_is_replaced_and_a_drained_one_terminated():
    p = plan(snap(slot(1), slot(2), slot(3, "idle")), decision(2), R, flapped=FLAP)
    assert ("enable", 3) in kinds(p) and ("cordon", 2) in kinds(p)
    assert any(a.reason.startswith("replaced") and a.slot == 2 for a in p.actions)
    # once drained, with its replacement serving, it goes like any drained server
    p = plan(snap(slot(1), slot(2, "drained"), slot(3)), decision(2), R, flapped=FLAP)
    assert ("terminate", 2) in kinds(p) and ("enable", 2) not in kinds(p)


def test_unresponsive_vms_are_what_the_caller_keeps_for_the_flap_window():
    from scaler.planner import unresponsive_vms
    s = snap(slot(1), slot(2, bbb_api_up=False), slot(3, "booting"), slot(4, bbb_api_up=False, in_maintenance=True))
    assert unresponsive_vms(s, R) == {"vm2": NOW}
