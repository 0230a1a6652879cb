"""Unit tests of the admission policy (monitor/admission.py): what a request is, from its head, and
which requests run, wait or are refused. The worker that applies it is tested under load in
test_load.py."""
from __future__ import annotations

import pytest

from monitor.serving.admission import HEALTH, HEAVY, RETRY_AFTER_SECONDS, STATIC, Admission, Decision, refusal

ANN, BOB, CID = "Basic YW5u", "Basic Ym9i", "Basic Y2lk"


def head(request_line: str, *headers: str) -> bytes:
    return "\r\n".join((request_line, *headers)).encode()


@pytest.mark.parametrize("request_line, kind", [
    ("GET /flower/healthcheck HTTP/1.1", HEALTH),
    ("GET /flower/healthcheck/ready HTTP/1.1", HEALTH),
    ("HEAD /flower/healthcheck?strict=1 HTTP/1.1", HEALTH),
    ("POST /flower/healthcheck HTTP/1.1", HEAVY),
    ("GET /flower/healthcheckers HTTP/1.1", HEAVY),
    ("GET /healthcheck HTTP/1.1", HEAVY),  # outside the prefix: not the app's
    ("GET /flower/_dash-component-suites/dash/deps/react.js HTTP/1.1", STATIC),
    ("GET /flower/assets/style.css?m=1 HTTP/1.1", STATIC),
    ("GET /flower/_favicon.ico HTTP/1.1", STATIC),
    ("GET /flower/api/tasks?limit=10000 HTTP/1.1", HEAVY),
    ("POST /flower/_dash-update-component HTTP/1.1", HEAVY),
    ("GET /flower/ HTTP/1.1", HEAVY),
])
def test_a_request_is_a_health_check_a_static_file_or_heavy(request_line, kind):
    assert Admission("/flower/").classify(head(request_line, "Host: x"), "10.0.0.1")[0] == kind


def test_a_health_check_with_a_body_is_heavy_and_a_head_not_all_in_is_heavy_by_address():
    admission = Admission("/", by_credentials=True)
    assert admission.classify(head("GET /healthcheck HTTP/1.1", "content-length: 5"), "a") == (HEAVY, "a")
    assert admission.classify(b"", "10.0.0.1") == (HEAVY, "10.0.0.1")


def test_a_user_is_the_authorization_header_with_auth_and_the_address_without():
    request = head("GET /api/tasks HTTP/1.1", "Host: x", f"authorization:  {ANN} ")
    assert Admission("/", by_credentials=True).classify(request, "10.0.0.1") == (HEAVY, ANN)
    assert Admission("/", by_credentials=False).classify(request, "10.0.0.1") == (HEAVY, "10.0.0.1")


def test_a_user_over_his_limit_waits_and_one_over_the_waiting_limit_is_refused():
    admission = Admission(per_user=2, total=3, max_waiting=1)
    assert [admission.enter(n, ANN, 0) for n in ("a1", "a2", "a3", "a4")] == [
        Decision.RUN, Decision.RUN, Decision.WAIT, Decision.REFUSE]
    assert admission.enter("b1", BOB, 0) is Decision.RUN  # another user: below the total
    assert admission.leave(ANN) == [("a3", ANN)]


def test_a_freed_slot_goes_to_the_user_with_the_fewest_running_then_to_the_oldest():
    admission = Admission(per_user=2, total=3, max_waiting=10)
    for item, user in (("a1", ANN), ("a2", ANN), ("b1", BOB)):
        assert admission.enter(item, user, 0) is Decision.RUN
    for item, user in (("a3", ANN), ("b2", BOB), ("c1", CID), ("c2", CID)):
        assert admission.enter(item, user, 0) is Decision.WAIT  # every slot is taken
    assert admission.leave(BOB) == [("b2", BOB)]  # bob and cid run none: the oldest
    assert admission.leave(ANN) == [("c1", CID)]  # cid runs none, ann one: ahead of ann's older a3
    assert admission.leave(BOB) == [("a3", ANN)]  # ann and cid run one each: the oldest


def test_requests_that_waited_too_long_are_handed_back_in_order_and_no_longer_count():
    admission = Admission(per_user=1, total=1, max_waiting=2, wait_seconds=10)
    assert admission.enter("a1", ANN, 0) is Decision.RUN
    assert [admission.enter(item, ANN, now) for item, now in (("a2", 1), ("a3", 2), ("a4", 3))] == [
        Decision.WAIT, Decision.WAIT, Decision.REFUSE]
    assert admission.overdue(11.5) == ["a2"]
    assert admission.enter("a5", ANN, 12) is Decision.WAIT  # a2 no longer waits
    assert admission.overdue(float("inf")) == ["a3", "a5"]
    assert admission.leave(ANN) == []


def test_a_refusal_is_a_whole_429_answer_that_closes_the_connection():
    answer = refusal("busy")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert f"\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n".encode() in head and b"\r\nConnection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head and body == b'{"error": "busy"}'
