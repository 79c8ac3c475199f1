"""Who may call whom, bad input, and the call history over REST."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningApp

from .call_clients import Parties, answered, record, rest, ring


async def _history(app: RunningApp, user: str, query: str = "") -> dict[str, Any]:
    status, body = await rest(app, "GET", "/api/v1/calls" + query, user)
    assert status == 200, body
    return body


async def test_blocked_users_cannot_call_each_other(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    status, body = await rest(call_app, "POST", "/api/v1/users/alice/block", "bob")
    assert status == 200 and body["blocked"] is True
    for caller, callee in ((alice, "bob"), (bob, "alice")):
        ack = await caller.call("call:initiate", {"to": callee, "media": "video"})
        assert ack["error"]["code"] == "blocked"
    status, body = await rest(call_app, "POST", "/api/v1/calls", "alice", {"to": "bob"})
    assert status == 403 and body["code"] == "blocked"
    assert (await _history(call_app, "alice"))["calls"] == []
    assert not bob.seen("call:incoming")
    status, body = await rest(call_app, "DELETE", "/api/v1/users/alice/block", "bob")
    assert status == 200 and body == {"userId": "alice", "blocked": False, "removed": True}
    await ring(alice, bob)
    status, body = await rest(call_app, "POST", "/api/v1/users/bob/block", "bob")
    assert status == 400


async def test_require_match_lets_only_matches_call(make_call_app, backend: str) -> None:  # type: ignore[no-untyped-def]
    app = await make_call_app(require_match=True)
    group = Parties(app)
    try:
        alice, bob = await group("alice"), await group("bob")
        ack = await alice.call("call:initiate", {"to": "bob", "media": "audio"})
        assert ack["error"]["code"] == "not_matched"
        status, body = await rest(app, "PUT", "/api/v1/matches", "alice", {"userA": "alice", "userB": "bob"})
        assert status == 403  # not an admin
        pair = {"userA": "alice", "userB": "bob"}
        status, body = await rest(app, "PUT", "/api/v1/matches", "backend", pair, admin=True)
        assert status == 200 and body["created"] is True
        assert (await alice.wait("match:created"))["userId"] == "bob"
        assert (await bob.wait("match:created"))["userId"] == "alice"
        status, body = await rest(app, "PUT", "/api/v1/matches", "backend", pair, admin=True)
        assert status == 200 and body["created"] is False
        call_id = await ring(alice, bob, "audio")
        await alice.call("call:end", {"callId": call_id})
        status, body = await rest(app, "DELETE", "/api/v1/matches", "backend", pair, admin=True)
        assert status == 200 and body["removed"] is True
        ack = await bob.call("call:initiate", {"to": "alice", "media": "audio"})
        assert ack["error"]["code"] == "not_matched"
        status, body = await rest(app, "PUT", "/api/v1/matches", "backend", {"userA": "x", "userB": "x"}, admin=True)
        assert status == 400
    finally:
        await group.close()


async def test_bad_input_gets_error_acks_and_changes_nothing(call_app: RunningApp, parties: Parties) -> None:
    alice, bob, carol = await parties("alice"), await parties("bob"), await parties("carol")
    refusals = {
        "bad_request": [None, "bob", {}, {"to": 5}, {"to": "bob", "media": "hologram"}, {"to": "x" * 500}],
        "cannot_call_self": [{"to": "alice", "media": "video"}],
        "user_not_found": [{"to": "nobody", "media": "video"}],
    }
    for code, payloads in refusals.items():
        for payload in payloads:
            ack = await alice.call("call:initiate", payload)
            assert ack["error"]["code"] == code, (payload, ack)
            assert set(ack["error"]) == {"code", "message"}
    assert (await _history(call_app, "alice"))["calls"] == []

    call_id = await ring(alice, bob)
    ringing = await record(call_app, call_id)
    checks = [
        (bob, "call:answer", {"callId": "0" * 32}, "call_not_found"),
        (bob, "call:answer", {"callId": 7}, "bad_request"),
        (bob, "call:answer", [], "bad_request"),
        (carol, "call:answer", {"callId": call_id}, "forbidden"),
        (carol, "call:end", {"callId": call_id}, "forbidden"),
        (carol, "call:reject", {"callId": call_id}, "forbidden"),
        (alice, "call:answer", {"callId": call_id}, "not_callee"),
        (alice, "call:reject", {"callId": call_id}, "not_callee"),
        (bob, "call:reject", {"callId": call_id, "reason": "r" * 100}, "bad_request"),
        (alice, "call:extend_request", {"callId": call_id}, "not_active"),
        (alice, "call:sdp_offer", {"callId": call_id, "sdp": "v=0"}, "not_active"),
        (carol, "call:sdp_offer", {"callId": call_id, "sdp": "v=0"}, "forbidden"),
        (alice, "call:ice_candidate", {"callId": call_id, "candidate": None}, "not_active"),
    ]
    for party, event, payload, code in checks:
        ack = await party.call(event, payload)
        assert ack.get("error", {}).get("code") == code, (event, payload, ack)
    assert await record(call_app, call_id) == ringing
    assert not alice.seen("call:ended") and not bob.seen("call:ended")

    await bob.call("call:answer", {"callId": call_id})
    active = await record(call_app, call_id)
    checks = [
        (bob, "call:answer", {"callId": call_id}, "already_answered"),
        (bob, "call:reject", {"callId": call_id}, "already_answered"),
        (alice, "call:sdp_offer", {"callId": call_id, "sdp": "not sdp at all"}, "bad_sdp"),
        (alice, "call:sdp_offer", {"callId": call_id, "sdp": ""}, "bad_request"),
        (alice, "call:sdp_offer", {"callId": call_id, "sdp": "v=0", "direction": "recv"}, "unsupported_direction"),
        (alice, "call:ice_candidate", {"callId": call_id, "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"},
         "session_not_found"),
        (alice, "call:sdp_answer", {"callId": call_id, "sdp": "v=0"}, "no_offer_pending"),
    ]
    for party, event, payload, code in checks:
        ack = await party.call(event, payload)
        assert ack.get("error", {}).get("code") == code, (event, payload, ack)
    assert await record(call_app, call_id) == active

    await alice.call("call:end", {"callId": call_id})
    ended = await record(call_app, call_id)
    for party, event in ((bob, "call:answer"), (alice, "call:end"), (bob, "call:extend_request"),
                         (bob, "call:upgrade_request")):
        ack = await party.call(event, {"callId": call_id})
        assert ack["error"]["code"] == "call_ended", (event, ack)
    assert await record(call_app, call_id) == ended
    assert len(alice.seen("call:ended", call_id)) == 1


async def test_records_and_history_pages(call_app: RunningApp, parties: Parties) -> None:
    alice, bob, carol = await parties("alice"), await parties("bob"), await parties("carol")
    ids = []
    for callee in (bob, carol, bob):
        call_id = await ring(alice, callee, "audio")
        await alice.call("call:end", {"callId": call_id})
        ids.append(call_id)
    talked = await answered(bob, alice)
    await bob.call("call:end", {"callId": talked})
    ids.append(talked)

    page = await _history(call_app, "alice", "?limit=3")
    assert [c["id"] for c in page["calls"]] == ids[::-1][:3] and page["next"] == ids[1]
    rest_page = await _history(call_app, "alice", f"?limit=3&before={page['next']}")
    assert [c["id"] for c in rest_page["calls"]] == [ids[0]] and rest_page["next"] is None
    assert [c["id"] for c in (await _history(call_app, "carol"))["calls"]] == [ids[1]]
    newest = page["calls"][0]
    assert newest["callerId"] == "bob" and newest["endReason"] == "hangup" and newest["duration"] > 0

    for query, code in (("?limit=0", 400), ("?limit=101", 400), ("?limit=x", 400),
                        ("?before=" + "f" * 32, 404), (f"?before={ids[2]}", 200)):
        status, body = await rest(call_app, "GET", "/api/v1/calls" + query, "bob")
        assert status == code, (query, body)
    status, body = await rest(call_app, "GET", f"/api/v1/calls?before={ids[1]}", "dave")
    assert status == 403
    status, body = await rest(call_app, "GET", f"/api/v1/calls/{ids[1]}", "bob")
    assert status == 403 and body["code"] == "forbidden"
    status, body = await rest(call_app, "GET", f"/api/v1/calls/{ids[1]}", "root", admin=True)
    assert status == 200 and body["calleeId"] == "carol"
    status, body = await rest(call_app, "GET", "/api/v1/calls/" + "0" * 32, "bob")
    assert status == 404 and body["code"] == "call_not_found"
    status, body = await rest(call_app, "GET", "/api/v1/calls", None)
    assert status == 401
