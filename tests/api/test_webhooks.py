"""Signed webhooks: the API, the outbox written by real job transitions, and deliveries to a local receiver.

Deliveries are sent in this process by what `dora webhooks` runs (worker/webhooks.py: the
sweeper publishing due deliveries straight to the delivery task; tests/worker/test_webhooks.py
runs the real process and broker). The receiver is a real HTTP server on loopback, which the
operator setting (`webhook_allowed_cidrs`) allows for these tests only; signatures are checked
with the Standard Webhooks reference library.
"""

from __future__ import annotations

import base64
import ipaddress
import threading
import time
from typing import get_args

import pytest
from sqlalchemy import func, select, update

from api.schemas.webhooks import EventType
from store import jobs as job_store
from store import webhooks as webhook_store
from store.db import session_scope
from store.models import Job, WebhookAttempt, WebhookDelivery
from store.webhooks import EVENT_TYPES
from tests.support.jobs import wait_for
from tests.support.webhooks import Receiver, self_signed_certificate, send_due
from worker.webhooks import deliver

ALL_EVENTS = list(EVENT_TYPES)
LOOPBACK = ["127.0.0.0/8:*"]  # every port: the receivers listen on ephemeral ones
FAST = {"webhook_allowed_cidrs": LOOPBACK, "webhook_retry_schedule_seconds": [0.4, 1.2],
        "webhook_timeout_seconds": 2.0}


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def operator(app, settings):
    """Sets the API's settings for one test (`operator(**changes)`), as an operator's DORA_* would."""
    def configure(**changes):
        app.state.settings = settings.model_copy(update=changes)
        return app.state.settings

    yield configure
    app.state.settings = settings


@pytest.fixture
def loopback(operator, tenant):
    """The operator allows loopback targets (and a fast retry schedule) for this test; the
    tenant's webhooks are deleted afterwards, so nothing of theirs stays due for other tests."""
    yield operator(**FAST)
    for webhook in tenant.get("/v1/webhooks", params={"limit": 100}).json()["data"]:
        tenant.delete(f"/v1/webhooks/{webhook['id']}")


def _create(tenant, url: str, events=None) -> dict:
    response = tenant.post("/v1/webhooks", json={"url": url, "events": events or ALL_EVENTS})
    assert response.status_code == 200, response.text
    return response.json()


def _deliveries(tenant, webhook_id: str) -> list[dict]:
    response = tenant.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _run(worker, tenant, *, status="succeeded", checkpoint_at: int | None = 3) -> str:
    """A job through the real state machine: claim (running), a checkpoint, finish."""
    job = tenant.job()
    assert worker.claim(job["id"]) is not None
    if checkpoint_at is not None:
        worker.call(job_store.add_checkpoint, job_id=job["id"], step=checkpoint_at, storage_key="ckpt/3",
                    metrics={"loss": 0.5})
    failed = status == "failed"
    error = job_store.JobError(code="invalid_training_file", message="line 1: no tokens") if failed else None
    assert worker.call(job_store.finish_job, job_id=job["id"], status=status, error=error)
    return job["id"]


def test_the_event_types_are_the_stores():
    assert set(get_args(EventType)) == set(EVENT_TYPES) and len(EVENT_TYPES) == 5


def test_create_list_get_delete_and_the_secret_is_shown_once(tenant, loopback, receiver):
    created = _create(tenant, receiver.url, ["fine_tuning.job.succeeded", "fine_tuning.job.failed"])
    assert created["object"] == "webhook" and created["id"].startswith("wh_") and created["url"] == receiver.url
    assert created["events"] == ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]
    assert created["secret"].startswith("whsec_") and len(base64.b64decode(created["secret"][6:])) == 32
    listed = tenant.get("/v1/webhooks").json()
    assert [w["id"] for w in listed["data"]] == [created["id"]] and "secret" not in listed["data"][0]
    shown = tenant.get(f"/v1/webhooks/{created['id']}").json()
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    assert tenant.delete(f"/v1/webhooks/{created['id']}").json() == {"id": created["id"], "object": "webhook",
                                                                     "deleted": True}
    missing = tenant.get(f"/v1/webhooks/{created['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "webhook_not_found"


def test_webhooks_are_the_tenants_own(tenant, other_tenant, loopback, receiver, worker):
    webhook = _create(tenant, receiver.url)
    for path in (f"/v1/webhooks/{webhook['id']}", f"/v1/webhooks/{webhook['id']}/deliveries"):
        assert other_tenant.get(path).status_code == 404
    assert other_tenant.delete(f"/v1/webhooks/{webhook['id']}").status_code == 404
    assert other_tenant.get("/v1/webhooks").json()["data"] == []
    _run(worker, other_tenant, checkpoint_at=None)  # the other tenant's job: no delivery here
    assert _deliveries(tenant, webhook["id"]) == []
    assert tenant.get(f"/v1/webhooks/{webhook['id']}").status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    ({"events": ["fine_tuning.job.succeeded"]}, "url"),
    ({"url": "https://93.184.215.14/hook"}, "events"),
    ({"url": "https://93.184.215.14/hook", "events": []}, "events"),
    ({"url": "https://93.184.215.14/hook", "events": ["fine_tuning.job.done"]}, "events.0"),
    ({"url": "https://93.184.215.14/hook", "events": "fine_tuning.job.succeeded"}, "events"),
    ({"url": "ftp://93.184.215.14/hook", "events": ["fine_tuning.job.failed"]}, "url"),
    ({"url": "https://user:pw@93.184.215.14/hook", "events": ["fine_tuning.job.failed"]}, "url"),
    ({"url": "https://93.184.215.14:99999/", "events": ["fine_tuning.job.failed"]}, "url"),
    ({"url": "not a url", "events": ["fine_tuning.job.failed"]}, "url"),
    ({"url": "https://" + "a" * 2050, "events": ["fine_tuning.job.failed"]}, "url"),
    ({"url": "https://93.184.215.14/", "events": ["fine_tuning.job.failed"], "secret": "mine"}, "secret"),
])
def test_bad_input_is_a_400_naming_the_field(tenant, body, param):
    response = tenant.post("/v1/webhooks", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://100.64.0.1/",
    "http://0.0.0.0/", "http://2130706433/", "http://[fd00::1]/", "http://224.0.0.1/", "http://[2002:7f00:1::]/",
])
def test_a_private_target_is_refused_at_creation_without_the_operator_setting(tenant, url):
    response = tenant.post("/v1/webhooks", json={"url": url, "events": ALL_EVENTS})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "url" and "not a public address" in error["message"], error
    assert tenant.get("/v1/webhooks").json()["data"] == []


def test_a_public_address_is_accepted_and_the_operator_may_allow_private_ones(tenant, operator):
    public = tenant.post("/v1/webhooks", json={"url": "https://93.184.215.14/hook", "events": ALL_EVENTS})
    assert public.status_code == 200, public.text
    operator(webhook_allow_private=True)
    assert tenant.post("/v1/webhooks", json={"url": "http://10.1.2.3/", "events": ALL_EVENTS}).status_code == 200
    for webhook in tenant.get("/v1/webhooks").json()["data"]:
        tenant.delete(f"/v1/webhooks/{webhook['id']}")


def test_webhooks_per_tenant_are_capped(tenant, loopback, operator, receiver):
    operator(**FAST, webhook_max_per_tenant=2)
    _create(tenant, receiver.url)
    _create(tenant, receiver.url)
    third = tenant.post("/v1/webhooks", json={"url": receiver.url, "events": ALL_EVENTS})
    assert third.status_code == 400 and third.json()["error"]["code"] == "webhook_limit_reached", third.text


def test_real_job_transitions_are_delivered_signed_and_verify(tenant, loopback, receiver, worker):
    webhook = _create(tenant, receiver.url)
    failed_only = _create(tenant, receiver.url, ["fine_tuning.job.failed"])
    job = tenant.job()
    assert worker.claim(job["id"]) is not None
    # the outbox row was committed with the claim itself, before anything was sent
    pending = _deliveries(tenant, webhook["id"])
    assert [(d["event_type"], d["status"], d["attempts"]) for d in pending] == [
        ("fine_tuning.job.running", "pending", [])]
    worker.call(job_store.add_checkpoint, job_id=job["id"], step=3, storage_key="ckpt/3", metrics={"loss": 0.5})
    assert worker.call(job_store.finish_job, job_id=job["id"], status="succeeded")

    got = receiver.wait(3, drive=lambda: send_due(loopback))
    events = [request.verify(webhook["secret"]) for request in got]  # raises unless the signature verifies
    assert [e["type"] for e in events] == ["fine_tuning.job.running", "fine_tuning.job.checkpoint.created",
                                           "fine_tuning.job.succeeded"]
    for request, event in zip(got, events, strict=True):
        assert event["object"] == "event" and event["id"].startswith("evt_") and event["data"]["id"] == job["id"]
        assert request.headers["webhook-id"] == event["id"] and request.path == "/hooks/dora"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert request.headers["webhook-signature"].startswith("v1,")
        assert request.headers["content-type"] == "application/json"
    running, checkpoint, succeeded = (e["data"] for e in events)
    assert running["status"] == "running" and running["error"] is None
    assert checkpoint["step"] == 3 and checkpoint["metrics"] == {"loss": 0.5}
    assert checkpoint["checkpoint_id"].startswith("ftckpt-")
    assert succeeded["status"] == "succeeded" and succeeded["fine_tuned_model"].startswith("ft:tiny-llama:")
    assert succeeded["fine_tuned_model"] == tenant.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["fine_tuned_model"]

    shown = _deliveries(tenant, webhook["id"])  # newest first, each with its attempt
    assert [d["event_type"] for d in shown] == [e["type"] for e in reversed(events)]
    for delivery, event in zip(shown, reversed(events), strict=True):
        assert delivery["status"] == "delivered" and delivery["event_id"] == event["id"]
        assert delivery["payload"] == event and delivery["next_attempt_at"] is None and delivery["finished_at"]
        [attempt] = delivery["attempts"]
        assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["duration_ms"] >= 0
    assert _deliveries(tenant, failed_only["id"]) == []  # subscribed to another event type
    time.sleep(0.3)
    send_due(loopback)
    assert len(receiver.received) == 3  # each event once


def test_a_failed_job_carries_its_error(tenant, loopback, receiver, worker):
    webhook = _create(tenant, receiver.url, ["fine_tuning.job.failed"])
    job_id = _run(worker, tenant, status="failed")
    [request] = receiver.wait(1, drive=lambda: send_due(loopback))
    data = request.verify(webhook["secret"])["data"]
    assert data == {"id": job_id, "object": "fine_tuning.job", "status": "failed", "fine_tuned_model": None,
                    "error": {"code": "invalid_training_file", "message": "line 1: no tokens", "param": None}}


def test_a_receiver_that_answers_500_twice_gets_the_event_three_times_with_growing_delays(tenant, loopback, worker):
    receiver = Receiver(answers=[500, 500])
    try:
        webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
        job = tenant.job()
        assert worker.claim(job["id"]) is not None
        got = receiver.wait(3, drive=lambda: send_due(loopback))
    finally:
        receiver.close()
    first, second, third = got
    for request in got:
        assert request.verify(webhook["secret"])["type"] == "fine_tuning.job.running"
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert first.body == second.body == third.body  # the same message each time, signed anew
    schedule = loopback.webhook_retry_schedule_seconds
    assert second.at - first.at >= schedule[0] and third.at - second.at >= schedule[1]
    assert third.at - second.at > second.at - first.at
    [delivery] = _deliveries(tenant, webhook["id"])
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    times = [a["attempted_at"] for a in delivery["attempts"]]
    assert times == sorted(times)


def test_after_the_last_retry_the_delivery_is_failed(tenant, loopback, worker):
    receiver = Receiver(answers=[503, 503, 503, 503])
    try:
        webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
        assert worker.claim(tenant.job()["id"]) is not None
        receiver.wait(3, drive=lambda: send_due(loopback))
        time.sleep(1.5)
        send_due(loopback)
    finally:
        receiver.close()
    assert len(receiver.received) == 3  # the first attempt and one per delay of the schedule
    [delivery] = _deliveries(tenant, webhook["id"])
    assert delivery["status"] == "failed" and [a["status_code"] for a in delivery["attempts"]] == [503, 503, 503]
    assert delivery["next_attempt_at"] is None


def test_a_deleted_webhook_receives_nothing(tenant, loopback, settings):
    receiver = Receiver(answers=[500])
    try:
        retried = _create(tenant, receiver.url, ["fine_tuning.job.cancelled"])
        never = _create(tenant, receiver.url, ["fine_tuning.job.cancelled"])
        job = tenant.job()
        cancelled = tenant.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")  # queued -> cancelled, via the API
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert tenant.delete(f"/v1/webhooks/{never['id']}").status_code == 200  # before any attempt
        [first] = receiver.wait(1, drive=lambda: send_due(loopback))  # `retried` answered 500 once
        assert tenant.delete(f"/v1/webhooks/{retried['id']}").status_code == 200  # its retry was pending
        deadline = time.monotonic() + 2.5  # past the retry's time
        while time.monotonic() < deadline:
            send_due(loopback)
            time.sleep(0.05)
    finally:
        receiver.close()
    assert len(receiver.received) == 1 and first.verify(retried["secret"])["type"] == "fine_tuning.job.cancelled"
    with session_scope(settings) as session:  # their pending deliveries went with them
        left = select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.webhook_id.in_([retried["id"], never["id"]]))
        assert session.scalar(left) == 0
        orphans = select(func.count()).select_from(WebhookAttempt).where(
            WebhookAttempt.delivery_id.not_in(select(WebhookDelivery.id)))
        assert session.scalar(orphans) == 0


def test_the_target_is_checked_again_at_delivery_time(tenant, loopback, operator, receiver, worker):
    webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
    closed = operator(**FAST | {"webhook_allowed_cidrs": []})  # the operator took loopback back
    assert worker.claim(tenant.job()["id"]) is not None
    send_due(closed)
    assert receiver.received == []
    [delivery] = _deliveries(tenant, webhook["id"])
    [attempt] = delivery["attempts"]
    assert delivery["status"] == "pending" and attempt["status_code"] is None
    assert "refused" in attempt["error"] and "127.0.0.1" in attempt["error"] and "not a public address" in attempt[
        "error"]


def test_redirects_are_not_followed_and_a_slow_receiver_is_cut_off(tenant, loopback, worker):
    elsewhere = Receiver()
    redirecting = Receiver(answers=[302], location=elsewhere.url)
    slow = Receiver(delay=3.0)
    try:
        moved = _create(tenant, redirecting.url, ["fine_tuning.job.running"])
        hanging = _create(tenant, slow.url, ["fine_tuning.job.running"])
        assert worker.claim(tenant.job()["id"]) is not None
        quick = loopback.model_copy(update={"webhook_timeout_seconds": 0.5})
        started = time.monotonic()
        send_due(quick)
        took = time.monotonic() - started
    finally:
        for receiver in (elsewhere, redirecting, slow):
            receiver.close()
    assert len(redirecting.received) == 1 and elsewhere.received == []
    [attempt] = _deliveries(tenant, moved["id"])[0]["attempts"]
    assert attempt["status_code"] == 302 and "redirects are not followed" in attempt["error"]
    [attempt] = _deliveries(tenant, hanging["id"])[0]["attempts"]
    assert attempt["status_code"] is None and "timed out" in attempt["error"] and attempt["duration_ms"] < 1500
    assert took < 2.5


def test_a_duplicate_message_is_dropped(tenant, loopback, receiver, worker):
    webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
    assert worker.claim(tenant.job()["id"]) is not None
    [delivery] = _deliveries(tenant, webhook["id"])
    assert deliver(delivery["id"], loopback) == "delivered"
    assert deliver(delivery["id"], loopback) is None  # the same message again: not due, nothing sent
    assert len(receiver.received) == 1


def test_the_outbox_is_published_right_after_its_commit_and_never_after_a_rollback(tenant, loopback, receiver,
                                                                                   worker, monkeypatch):
    webhook = _create(tenant, receiver.url, ["fine_tuning.job.running", "fine_tuning.job.cancelled"])
    published = []

    def publish(delivery_id: str, *, broker_url: str) -> bool:
        with session_scope(loopback) as session:  # another session: the row is committed already
            published.append((session.get(WebhookDelivery, delivery_id).event_type, broker_url))
        return True

    monkeypatch.setattr(webhook_store, "publish_delivery", publish)
    job = tenant.job()
    assert worker.claim(job["id"]) is not None
    assert published == [("fine_tuning.job.running", loopback.broker_url)]
    with session_scope(loopback) as session:  # a transition that rolls back takes its deliveries with it
        session.execute(update(Job).where(Job.id == job["id"]).values(status="cancelled"))
        assert webhook_store.job_event(session, session.get(Job, job["id"], populate_existing=True))
        session.rollback()
        session.commit()
    assert len(published) == 1 and [d["event_type"] for d in _deliveries(tenant, webhook["id"])] == [
        "fine_tuning.job.running"]


def test_every_address_a_host_resolves_to_must_be_allowed_and_a_slow_lookup_is_cut_short(settings):
    def resolver(*addresses):
        return lambda host, port: list(addresses)

    public = webhook_store.check_target("https://hooks.example/x?y=1", settings,
                                        resolve=resolver("93.184.215.14", "2606:4700::1111"))
    assert public.addresses == ("93.184.215.14", "2606:4700::1111") and public.path == "/x?y=1"
    assert public.port == 443 and public.host == "hooks.example"
    with pytest.raises(webhook_store.TargetRefused, match=r"10\.0\.0\.7 \(hooks\.example\).*not a public address"):
        webhook_store.check_target("https://hooks.example/", settings, resolve=resolver("93.184.215.14", "10.0.0.7"))
    allowed = settings.model_copy(update={"webhook_allowed_cidrs": [ipaddress.ip_network("10.0.0.0/24")]})
    assert webhook_store.check_target("http://hooks.example/", allowed, resolve=resolver("10.0.0.7")).port == 80
    with pytest.raises(webhook_store.TargetRefused, match="not a public address"):  # outside the allowed network
        webhook_store.check_target("http://hooks.example/", allowed, resolve=resolver("10.0.1.7"))

    def slow(host, port):
        time.sleep(2)
        return ["93.184.215.14"]

    started = time.monotonic()
    with pytest.raises(webhook_store.TargetRefused, match="did not resolve within 0.2s"):
        webhook_store.check_target("https://slow.example/", settings, resolve=slow, resolve_timeout=0.2)
    assert time.monotonic() - started < 1


def test_a_job_the_reconciler_settles_is_an_event_too(tenant, loopback, receiver, worker):
    webhook = _create(tenant, receiver.url, ["fine_tuning.job.failed"])
    job = tenant.job({"max_attempts": 1})
    assert worker.claim(job["id"], lease_seconds=0) is not None  # its worker is gone at once
    time.sleep(0.01)
    with session_scope(loopback) as session:
        assert job["id"] in job_store.settle_abandoned(session)
    [request] = receiver.wait(1, drive=lambda: send_due(loopback))
    data = request.verify(webhook["secret"])["data"]
    assert data["id"] == job["id"] and data["status"] == "failed" and data["error"]["code"] == "attempts_exhausted"


def test_an_https_target_must_present_a_certificate_the_sender_trusts(tenant, loopback, worker, tmp_path,
                                                                      monkeypatch):
    certificate, key = self_signed_certificate(tmp_path)
    receiver = Receiver(tls=(certificate, key))
    try:
        webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
        assert webhook["url"].startswith("https://127.0.0.1:")
        assert worker.claim(tenant.job()["id"]) is not None
        send_due(loopback)  # not trusted: the TLS handshake fails, nothing is received
        [delivery] = _deliveries(tenant, webhook["id"])
        assert receiver.received == [] and "CERTIFICATE_VERIFY_FAILED" in delivery["attempts"][0]["error"]
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # now the sender trusts it: the retry goes through
        [request] = receiver.wait(1, drive=lambda: send_due(loopback))
    finally:
        receiver.close()
    assert request.verify(webhook["secret"])["type"] == "fine_tuning.job.running"
    [delivery] = _deliveries(tenant, webhook["id"])
    assert delivery["status"] == "delivered" and [a["status_code"] for a in delivery["attempts"]] == [None, 200]


# -- [reliability-3] N3: URLs normalised at registration ----------------------------------------------
def test_a_non_ascii_path_is_stored_percent_encoded_and_delivered(tenant, loopback, receiver, worker):
    url = receiver.url.replace("/hooks/dora", "/été/hooks?q=ü")
    webhook = _create(tenant, url, ["fine_tuning.job.running"])
    assert webhook["url"] == receiver.url.replace("/hooks/dora", "/%C3%A9t%C3%A9/hooks?q=%C3%BC")
    assert worker.claim(tenant.job()["id"]) is not None
    [request] = receiver.wait(1, drive=lambda: send_due(loopback))
    assert request.path == "/%C3%A9t%C3%A9/hooks?q=%C3%BC" and request.verify(webhook["secret"])
    [delivery] = _deliveries(tenant, webhook["id"])
    assert delivery["status"] == "delivered"


def test_an_international_host_is_looked_up_in_its_idna_form_and_an_invalid_one_is_a_400(tenant, settings):
    looked_up = []
    target = webhook_store.check_target("https://Bücher.example/ä", settings,
                                        resolve=lambda host, port: looked_up.append(host) or ["93.184.215.14"])
    assert looked_up == ["xn--bcher-kva.example"] and target.url == "https://xn--bcher-kva.example/%C3%A4"
    response = tenant.post("/v1/webhooks", json={"url": "https://☃.example/", "events": ALL_EVENTS})
    assert response.status_code == 400 and response.json()["error"]["param"] == "url", response.text
    assert "international domain name" in response.json()["error"]["message"]


# -- [reliability-3] N2: fairness, sweeps, the circuit breaker, every failure recorded ----------------
def test_an_exception_while_sending_ends_the_attempt_as_failed_with_its_reason(tenant, loopback, receiver, worker,
                                                                               monkeypatch):
    import worker.webhooks as sender

    def broken(*args, **kwargs):
        raise UnicodeEncodeError("ascii", "/été", 1, 2, "ordinal not in range(128)")

    webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
    assert worker.claim(tenant.job()["id"]) is not None
    monkeypatch.setattr(sender, "post", broken)
    send_due(loopback)
    [delivery] = _deliveries(tenant, webhook["id"])
    [attempt] = delivery["attempts"]
    assert delivery["status"] == "pending" and delivery["next_attempt_at"]  # its retry is scheduled
    assert attempt["status_code"] is None and "UnicodeEncodeError" in attempt["error"], attempt


def test_a_busy_webhook_is_deferred_without_holding_a_thread_and_other_tenants_go_on(tenant, other_tenant, loopback,
                                                                                     operator, worker):
    settings = operator(**FAST | {"webhook_timeout_seconds": 3.0}, webhook_max_in_flight_per_endpoint=1,
                        webhook_max_in_flight_per_tenant=2)
    slow, fast, others = Receiver(delay=1.2), Receiver(), Receiver()
    try:
        slow_hook = _create(tenant, slow.url, ["fine_tuning.job.running"])
        fast_hook = _create(tenant, fast.url, ["fine_tuning.job.running"])
        other_hook = _create(other_tenant, others.url, ["fine_tuning.job.running"])
        for owner in (tenant, tenant, other_tenant):
            assert worker.claim(owner.job()["id"]) is not None
        first, second = (d["id"] for d in reversed(_deliveries(tenant, slow_hook["id"])))
        held = threading.Thread(target=deliver, args=(first, settings))
        held.start()
        wait_for(lambda: slow.received, timeout=10, what="the slow receiver's first request", interval=0.02)
        started = time.monotonic()
        assert deliver(second, settings) == "deferred"  # its webhook has its one attempt in flight
        assert time.monotonic() - started < 1.0
        assert [deliver(d["id"], settings) for d in _deliveries(tenant, fast_hook["id"])] == ["delivered"] * 2
        [other] = _deliveries(other_tenant, other_hook["id"])
        assert deliver(other["id"], settings) == "delivered"
        assert held.is_alive()  # all of it while the slow attempt was still in flight
        deferred = next(d for d in _deliveries(tenant, slow_hook["id"]) if d["id"] == second)
        assert deferred["status"] == "pending" and deferred["attempts"] == []  # no attempt counted
        held.join(timeout=10)
        slow.delay = 0.0
        slow.wait(2, drive=lambda: send_due(settings))  # published again by the next sweep, and sent
    finally:
        for receiver in (slow, fast, others):
            receiver.close()
        for webhook in other_tenant.get("/v1/webhooks").json()["data"]:
            other_tenant.delete(f"/v1/webhooks/{webhook['id']}")
    assert [d["status"] for d in _deliveries(tenant, slow_hook["id"])] == ["delivered"] * 2


def test_the_sweeper_bounds_each_webhook_and_republishes_only_what_is_lost(tenant, other_tenant, loopback, worker,
                                                                           settings):
    busy = _create(tenant, "http://127.0.0.1:9/busy", ["fine_tuning.job.running"])
    quiet = _create(other_tenant, "http://127.0.0.1:9/quiet", ["fine_tuning.job.running"])
    try:
        for owner in (tenant,) * 4 + (other_tenant,):
            assert worker.claim(owner.job()["id"]) is not None
        mine = {d["id"] for hook, owner in ((busy, tenant), (quiet, other_tenant))
                for d in _deliveries(owner, hook["id"])}
        oldest = sorted(d["id"] for d in _deliveries(tenant, busy["id"]))[:2]
        [lone] = (d["id"] for d in _deliveries(other_tenant, quiet["id"]))

        def take(queued: int) -> set[str]:
            with session_scope(settings) as session:
                return mine & set(webhook_store.take_due(session, republish_after=0.3, per_webhook=2,
                                                         queued=lambda: queued))

        assert take(queued=5) == {*oldest, lone}  # two of the busy webhook's four, oldest first
        assert take(queued=5) == set()  # both still published: none more of it, and nothing twice
        with session_scope(settings) as session:  # a sender claims one, then dies before recording it
            assert webhook_store.claim_delivery(session, delivery_id=oldest[0], lock_seconds=0.1) is not None
        time.sleep(0.4)
        assert take(queued=5) == {oldest[0]}  # its lock expired: again at once, whatever is queued
        assert take(queued=0) == {oldest[1], lone}  # the queue is empty: their messages were lost
    finally:
        other_tenant.delete(f"/v1/webhooks/{quiet['id']}")


def test_a_delivery_published_after_its_commit_is_not_published_again_while_it_waits(tenant, loopback, receiver,
                                                                                      tmp_path):
    from kombu import Connection

    from worker.webhooks import Sweeper, queued_messages

    broker = loopback.model_copy(update={"broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                                         "webhook_republish_after_seconds": 0.2})
    webhook = _create(tenant, receiver.url, ["fine_tuning.job.running"])
    with session_scope(broker) as session:  # the claim's commit publishes its delivery to the queue
        assert job_store.claim_job(session, job_id=tenant.job()["id"], owner="w", lease_seconds=60) is not None
    [delivery] = _deliveries(tenant, webhook["id"])
    published = []
    sweeper = Sweeper(broker, publish=lambda delivery_id: published.append(delivery_id) or True,
                      queued=lambda: queued_messages(broker.broker_url))
    for _ in range(3):
        sweeper.run_once()
        time.sleep(0.15)
    assert delivery["id"] not in published and queued_messages(broker.broker_url) == 1  # queued once, and waiting
    with Connection(broker.broker_url) as connection:  # the message is lost (a broker restart)
        connection.default_channel.queue_purge("webhooks")
    sweeper.run_once()
    assert published.count(delivery["id"]) == 1  # the queue is empty: published again


def test_a_webhook_that_keeps_failing_opens_its_breaker_then_closes_after_the_cooldown(tenant, loopback, operator,
                                                                                     worker, caplog):
    settings = operator(**FAST, webhook_breaker_failures=2, webhook_breaker_cooldown_seconds=1.0)
    receiver = Receiver(answers=[500, 500])
    try:
        webhook = _create(tenant, receiver.url, ["fine_tuning.job.running", "fine_tuning.job.succeeded"])
        first, second = tenant.job(), tenant.job()
        assert worker.claim(first["id"]) is not None and worker.claim(second["id"]) is not None
        with caplog.at_level("WARNING", logger="worker.webhooks"):
            receiver.wait(2, drive=lambda: send_due(settings))
        assert "circuit breaker open after 2 failed attempts in a row" in caplog.text
        failed = _deliveries(tenant, webhook["id"])
        assert [d["status"] for d in failed] == ["failed", "failed"]
        for delivery in failed:
            assert [a["status_code"] for a in delivery["attempts"]] == [500, None], delivery
            assert delivery["attempts"][-1]["error"].startswith("circuit breaker open: 2 attempts in a row")
        assert worker.call(job_store.finish_job, job_id=first["id"], status="succeeded")
        send_due(settings)  # held: the breaker is open
        held = _deliveries(tenant, webhook["id"])[0]
        assert held["status"] == "pending" and held["attempts"] == [] and len(receiver.received) == 2
        [request] = receiver.wait(3, timeout=10, drive=lambda: send_due(settings))[2:]  # after the cool-down
    finally:
        receiver.close()
    assert request.verify(webhook["secret"])["type"] == "fine_tuning.job.succeeded"
    assert _deliveries(tenant, webhook["id"])[0]["status"] == "delivered"


# -- [reliability-3] N7: the address policy, and the operator's allow-list with ports --------------------------
@pytest.mark.parametrize("url", [
    "http://[::127.0.0.1]:8719/", "http://[::a00:1]/", "http://[fec0::1]/", "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b:1::5db8:d70e]/", "http://[2002:a00:1::1]/", "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
    "http://240.0.0.1/", "http://255.255.255.255/", "http://198.18.0.1/", "http://[::ffff:10.0.0.1]/",
])
def test_every_non_public_address_class_is_refused(tenant, url):
    response = tenant.post("/v1/webhooks", json={"url": url, "events": ALL_EVENTS})
    assert response.status_code == 400 and response.json()["error"]["param"] == "url", response.text
    assert "not a public address" in response.json()["error"]["message"]


def test_an_ipv6_address_standing_for_a_public_ipv4_one_is_public():
    for address in ("::ffff:93.184.215.14", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1", "2606:4700::1111"):
        assert webhook_store.is_public(ipaddress.ip_address(address)), address


def test_the_operator_allows_a_network_on_its_ports_only(tenant, operator, receiver):
    port = int(receiver.url.split(":")[2].split("/")[0])
    operator(webhook_allowed_cidrs=[f"127.0.0.1/32:{port}"])
    created = _create(tenant, receiver.url)
    for other in ("http://127.0.0.1:6379/", "http://127.0.0.1:8000/v1/files", "http://127.0.0.2:{port}/"):
        refused = tenant.post("/v1/webhooks", json={"url": other.format(port=port), "events": ALL_EVENTS})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "url", refused.text
        assert "not a public address" in refused.json()["error"]["message"]
    operator(webhook_allowed_cidrs=["127.0.0.0/8"])  # a network without ports: 80 and 443 only
    assert tenant.post("/v1/webhooks", json={"url": receiver.url, "events": ALL_EVENTS}).status_code == 400
    assert tenant.post("/v1/webhooks", json={"url": "https://127.0.0.1/x", "events": ALL_EVENTS}).status_code == 200
    for webhook in tenant.get("/v1/webhooks").json()["data"]:
        tenant.delete(f"/v1/webhooks/{webhook['id']}")
    assert created["url"] == receiver.url


def test_allowed_networks_are_read_with_their_ports(monkeypatch):
    import json

    from pydantic import ValidationError

    from dora_cli.worker_commands import DEMO_WEBHOOK_CIDRS
    from store.settings import WebhookTargetSettings

    read = WebhookTargetSettings(_env_file=None, webhook_allowed_cidrs=[
        "127.0.0.1/32:8719", "[::1]:8000-8010,9000", "10.0.0.0/8", "192.168.0.0/16:*", ipaddress.ip_network("::1/128")])
    assert read.webhook_allowed_cidrs == ["127.0.0.1/32:8719", "::1/128:8000-8010,9000", "10.0.0.0/8:80,443",
                                          "192.168.0.0/16:*", "::1/128:80,443"]
    monkeypatch.setenv("DORA_WEBHOOK_ALLOWED_CIDRS", DEMO_WEBHOOK_CIDRS)
    demo = WebhookTargetSettings(_env_file=None)
    assert all(entry.endswith(":8719") for entry in demo.webhook_allowed_cidrs), demo  # the demo's receiver port
    assert json.loads(DEMO_WEBHOOK_CIDRS)
    for bad in ("127.0.0.1/32:0", "127.0.0.1/32:70000", "127.0.0.1/32:x", "127.0.0.1/8:80", "[::1]80", "10.0.0.0/8:"):
        with pytest.raises(ValidationError):
            WebhookTargetSettings(_env_file=None, webhook_allowed_cidrs=[bad])
