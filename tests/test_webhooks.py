"""Webhooks (SPEC section 7), against real server processes and a real receiver that
checks every request with the ``standardwebhooks`` library."""

from __future__ import annotations

import collections
import random
import string
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import StoresAt
from tests.server import Server
from tests.smtp_server import SmtpServer, free_port
from tests.webhook_receiver import Receiver, Received, flaky, new_secret
from userflow.actors.webhooks import IN_FLIGHT

TYPES = ("user.created", "user.verified", "user.active", "user.flagged", "user.expired", "user.cancelled", "workflow.failed")


def start(stores_at: StoresAt, name: str, receiver_urls: list[str], secrets: str, *args: str) -> Server:
    """A server on the test backend's stores ``name`` (restarted on the same name, it finds its runs)."""
    flags = [item for url in receiver_urls for item in ("--webhook-url", url)]
    return stores_at.server("--email-failure-rate", "0", *flags, *args, name=name, env={"USERFLOW_WEBHOOK_SECRET": secrets}).start()


def signup(server: Server, email: str, name: str = "Ann Lee") -> dict[str, Any]:
    status, body = server.request("POST", "/api/signup", {"email": email, "name": name})
    assert status == 202, body
    return body


def click(server: Server, run_id: str) -> None:
    outbox = server.wait_for(f"/api/outbox?workflowId={run_id}", lambda b: bool(b["emails"]))
    token = outbox["emails"][0]["link"].split("token=")[1]
    status, body = server.request("POST", "/api/verify", {"token": token})
    assert status == 200, body


def of_user(received: list[Received], user_id: str) -> list[Received]:
    return [r for r in received if r.body["data"]["id"] == user_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as made:
        yield made


# -- what is sent ----------------------------------------------------------------------------


def test_every_type_arrives_signed_with_each_secret_and_the_user_record(stores_at: StoresAt) -> None:
    first, second, stranger = new_secret(), new_secret(), new_secret()
    with Receiver(first, second, stranger) as hooks, SmtpServer() as smtp:
        smtp.handler.reply = lambda envelope: "550 5.1.1 no such user" if "bounce" in envelope.rcpt_tos[0] else None
        server = start(stores_at, "a", [hooks.url], f"{first} {second}", "--smtp-url", smtp.url)
        try:
            ann = signup(server, "ann@example.com")
            flagged = signup(server, "x12345@mailinator.com", "12345")
            cancelled = signup(server, "cy@example.com", "Cy Young")
            bounced = signup(server, "bounce@example.com", "Bo Unce")
            for accepted in (ann, flagged):
                server.wait_for(f"/api/workflows/{accepted['workflowId']}", lambda d: d["status"] == "WAITING")
                message = next(m for m in smtp.handler.wait_for(1) if accepted["workflowId"] in m["Message-ID"])
                text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
                token = next(word for word in text.split() if "token=" in word).split("token=")[1]
                assert server.request("POST", "/api/verify", {"token": token})[0] == 200
            server.wait_for(f"/api/workflows/{cancelled['workflowId']}", lambda d: d["status"] == "WAITING")
            assert server.request("POST", f"/api/workflows/{cancelled['workflowId']}/cancel")[0] == 200
            want = {
                ann["userId"]: ["user.created", "user.verified", "user.active"],
                flagged["userId"]: ["user.created", "user.verified", "user.flagged"],
                cancelled["userId"]: ["user.created", "user.cancelled"],
                bounced["userId"]: ["user.created", "workflow.failed"],
            }
            got = hooks.wait_until(lambda rs: all(len(of_user(rs, u)) >= len(t) for u, t in want.items()))
            for user_id, types in want.items():
                assert [r.body["type"] for r in of_user(got, user_id)] == types
            for request in got:
                assert request.verified == {first: True, second: True, stranger: False}, "signed with each secret, and only those"
                assert len(request.signature.split(" ")) == 2
                assert set(request.body) == {"type", "timestamp", "data"}
            assert len({r.id for r in got}) == len(got), "one webhook-id per event"
            for user_id in want:
                final = of_user(got, user_id)[-1].body["data"]
                user = server.get(f"/api/users/{user_id}")
                for key in ("id", "email", "name", "status", "createdAt", "verifiedAt", "finishedAt", "workflowId"):
                    assert final[key] == user[key], (key, final[key], user[key])
                if user["risk"]:
                    assert final["risk"] == {k: user["risk"][k] for k in ("decision", "score", "reasons", "source")}
            verified = next(r for r in of_user(got, ann["userId"]) if r.body["type"] == "user.verified").body["data"]
            assert verified["status"] == "PENDING" and verified["verifiedAt"]
            failure = of_user(got, bounced["userId"])[-1].body["data"]
            assert failure["error"]["step"] == "send-verification-email" and "550" in failure["error"]["message"]
            # Listed as delivered once the outcome is durable, a moment after the receiver answered.
            listing = server.wait_for("/api/webhooks/deliveries?limit=200", lambda b: all(d["status"] == "delivered" for d in b["deliveries"]))
            assert listing["configured"] is True
            listed = listing["deliveries"]
            assert {d["eventId"] for d in listed} == {r.id for r in got}
            detail = server.wait_for(f"/api/workflows/{ann['workflowId']}", lambda d: all(w["status"] == "delivered" for w in d["webhooks"]))
            assert len(detail["webhooks"]) == 3
            assert sum(e["type"] == "webhook-delivered" for e in detail["timeline"]) == 3
        finally:
            server.stop()
    expiring = Receiver(first)
    with expiring:
        server = start(stores_at, "b", [expiring.url], first, "--verify-ttl", "1", "--reminder-after", "0")
        try:
            late = signup(server, "late@example.com")
            got = expiring.wait_until(lambda rs: len(rs) >= 2)
            assert [r.body["type"] for r in got] == ["user.created", "user.expired"]
            assert got[1].body["data"]["status"] == "EXPIRED" and got[1].body["data"]["workflowId"] == late["workflowId"]
        finally:
            server.stop()


# -- when the receiver fails --------------------------------------------------------------------


def test_a_failing_receiver_gets_the_schedule_then_failed_and_an_operator_retry_delivers(stores_at: StoresAt, receiver: Receiver) -> None:
    secret = new_secret()
    receiver.secrets = (secret,)
    answers = {1: 500, 2: "redirect", 3: "timeout", 4: 503}  # every attempt of the first event fails
    receiver.answer = lambda n: answers.get(n, 204)
    receiver.hang = 5.0
    closed = f"http://127.0.0.1:{free_port()}/nobody-listens"
    server = start(stores_at, "data", [receiver.url, closed], secret, "--webhook-retry-schedule", "0.2,0.3,0.4", "--webhook-timeout", "0.5")
    try:
        accepted = signup(server, "ann@example.com")
        click(server, accepted["workflowId"])
        server.wait_for(f"/api/users/{accepted['userId']}", lambda u: u["status"] == "ACTIVE")  # never waits for a webhook
        got = receiver.wait_until(lambda rs: len(rs) >= 6)
        created = [r for r in got if r.body["type"] == "user.created"]
        assert [r.answered for r in created[:4]] == [500, 302, 0, 503]
        first_later = min(i for i, r in enumerate(got) if r.body["type"] != "user.created")
        assert first_later >= 4, "no later event before the first one is given up"
        assert [r.body["type"] for r in got[4:6]] == ["user.verified", "user.active"]
        listed = server.wait_for("/api/webhooks/deliveries?status=failed", lambda b: len(b["deliveries"]) == 4)["deliveries"]
        mine = next(d for d in listed if d["url"] == receiver.url)
        errors = [a["error"] for a in mine["attempts"]]
        assert errors[0] == "HTTP 500" and "redirects are not followed" in errors[1]
        assert "no answer within 0.5 s" in errors[2] and errors[3] == "HTTP 503"
        times = [time.mktime(time.strptime(a["at"][:19], "%Y-%m-%dT%H:%M:%S")) + float(a["at"][19:-1] or 0) for a in mine["attempts"]]
        assert all(later - earlier >= delay - 0.05 for earlier, later, delay in zip(times, times[1:], (0.2, 0.3, 0.4)))
        refused = [d for d in listed if d["url"] == closed]
        assert len(refused) == 3 and all(len(d["attempts"]) == 4 for d in refused)
        assert all("Connect" in d["attempts"][0]["error"] for d in refused)
        # The operator sends it again: delivered, with the same webhook-id.
        status, body = server.request("POST", f"/api/webhooks/deliveries/{mine['id']}/retry")
        assert status == 202 and body["status"] == "pending", body
        again = receiver.wait_until(lambda rs: len(rs) >= 7)[-1]
        assert again.id == created[0].id and again.answered == 204 and again.body == created[0].body
        server.wait_for("/api/webhooks/deliveries?status=delivered", lambda b: any(d["id"] == mine["id"] for d in b["deliveries"]))
        assert server.request("POST", f"/api/webhooks/deliveries/{mine['id']}/retry")[0] == 409
        assert server.request("POST", "/api/webhooks/deliveries/dlv_nope_1_1/retry")[0] == 404
        everything = server.get("/api/webhooks/deliveries?limit=200")["deliveries"]
        paged, cursor = [], ""
        while cursor is not None:
            page = server.get(f"/api/webhooks/deliveries?limit=2{'&cursor=' + cursor if cursor else ''}")
            paged += page["deliveries"]
            cursor = page["nextCursor"]
        assert [d["id"] for d in paged] == [d["id"] for d in everything] and len(paged) == 6
        timeline = server.get(f"/api/workflows/{accepted['workflowId']}")["timeline"]
        assert any(e["type"] == "webhook-resent" and "by local operator" in e["message"] for e in timeline)
        mine_entries = [e["type"] for e in timeline if receiver.url in e["message"] and "user.created" in e["message"]]
        assert mine_entries == ["webhook-retrying"] * 3 + ["webhook-failed", "webhook-resent", "webhook-delivered"], mine_entries
        metrics = urlopen_text(server.url + "/metrics")
        assert 'userflow_webhook_deliveries_total{status="failed",type="user.created"}' in metrics
    finally:
        server.stop()


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


# -- under crashes -----------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_no_event_and_keeps_each_users_order(stores_at: StoresAt) -> None:
    secret = new_secret()
    rng = random.Random(11)
    names = iter(f"{a}{b}{c}" for a in string.ascii_lowercase for b in string.ascii_lowercase for c in "aeiou")
    with Receiver(secret) as hooks:
        hooks.answer = flaky(0.3)
        args = ("--webhook-retry-schedule", "0.05,0.1,0.2,0.3,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5")
        server = start(stores_at, "data", [hooks.url], secret, *args)
        users: dict[str, str] = {}  # user id -> run id
        try:
            for _ in range(4):
                # The kill falls at a random moment of a round of signups and clicks.
                doomed = server
                killer = threading.Thread(target=lambda: (time.sleep(rng.uniform(0.3, 1.5)), doomed.kill()))
                killer.start()
                for _ in range(40):
                    try:
                        accepted = signup(doomed, f"{next(names)}@example.com")
                        users[accepted["userId"]] = accepted["workflowId"]
                        click(doomed, accepted["workflowId"])
                    except (OSError, AssertionError, TimeoutError):
                        break  # the server is gone
                killer.join()
                server = start(stores_at, "data", [hooks.url], secret, *args)
            while len(users) < 110:
                accepted = signup(server, f"{next(names)}@example.com")
                users[accepted["userId"]] = accepted["workflowId"]
            for run_id in users.values():  # again for those cut off: harmless for the others
                click(server, run_id)
            for user_id in users:
                server.wait_for(f"/api/users/{user_id}", lambda u: u["status"] == "ACTIVE", timeout=30)

            def complete(received: list[Received]) -> bool:
                delivered = {(r.body["data"]["id"], r.body["type"]) for r in received if 200 <= r.answered < 300}
                return all((u, t) in delivered for u in users for t in ("user.created", "user.verified", "user.active"))

            try:
                got = hooks.wait_until(complete, timeout=60)
            except AssertionError:
                delivered = {(r.body["data"]["id"], r.body["type"]) for r in hooks.received if 200 <= r.answered < 300}
                missing = [(u, t) for u in users for t in ("user.created", "user.verified", "user.active") if (u, t) not in delivered]
                listing = server.get("/api/webhooks/deliveries?limit=200")["deliveries"]
                print("MISSING", len(missing), missing[:5])
                for u, t in missing[:3]:
                    print([d for d in listing if d["userId"] == u])
                    print(server.get(f"/api/workflows/{users[u]}")["timeline"][-6:])
                raise
        finally:
            server.stop()
    assert len(users) >= 110
    bodies: dict[str, dict[str, Any]] = {}
    for request in got:
        assert request.verified[secret]
        assert bodies.setdefault(request.id, request.body) == request.body, "a repeat is the same event, same id"
    for user_id in users:
        mine = [(i, r) for i, r in enumerate(got) if r.body["data"]["id"] == user_id]
        order = ["user.created", "user.verified", "user.active"]
        first_sent = {t: min(i for i, r in mine if r.body["type"] == t) for t in order}
        first_ok = {t: min(i for i, r in mine if r.body["type"] == t and 200 <= r.answered < 300) for t in order}
        for earlier, later in zip(order, order[1:]):
            assert first_sent[later] > first_ok[earlier], (user_id, earlier, later)
        assert len({r.id for _, r in mine}) == 3, "three events, three ids, whatever was repeated"
    # At least once, and again only for what a kill cut off: a delivery answered 2xx is
    # repeated only if the kill fell before its answer was saved, at most the attempts in
    # flight at each of the 4 kills.
    answered = collections.Counter(r.id for r in got if 200 <= r.answered < 300)
    repeats = sum(n - 1 for n in answered.values())
    assert repeats <= 4 * IN_FLIGHT, f"{repeats} deliveries repeated after being answered"


# -- erasure -------------------------------------------------------------------------------------------


def test_an_erased_users_payloads_still_to_be_sent_leave_every_file_and_row(stores_at: StoresAt, receiver: Receiver) -> None:
    from tests.test_erasure import kept_anywhere

    secret = new_secret()
    receiver.secrets = (secret,)
    receiver.answer = lambda n: 500  # every delivery stays pending, its payload kept to be sent again
    server = start(stores_at, "data", [receiver.url], secret, "--webhook-retry-schedule", "3600")
    try:
        accepted = signup(server, "erin.erased@example.com", "Erin Erased")
        receiver.wait_until(lambda rs: len(rs) >= 1)
        server.wait_for("/api/webhooks/deliveries", lambda b: any(d["attempts"] for d in b["deliveries"]))
        assert kept_anywhere(stores_at, server, ["erin.erased@example.com"]), "the pending payload is kept before erasure"
        status, body = server.request("DELETE", f"/api/users/{accepted['userId']}")
        assert status == 200, body
        assert kept_anywhere(stores_at, server, ["erin.erased@example.com", "Erin Erased"]) == []
    finally:
        server.stop()
