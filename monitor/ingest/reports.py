"""The collectors' reports: the counters each collector publishes in the store for the other
processes, and what the readers (the top bar, /healthcheck/ready, /api/collector, the pages'
refreshes) make of them per broker.

One collector records a broker at a time (the lease holder; its standbys read its report), and its
report is kept under `collector:BROKER`. Collectors sharing an events queue all record it, so each
keeps a report of its own, `collector:BROKER OWNER`, and a broker's readers see their sum."""
from __future__ import annotations

REPORT_PREFIX = "collector:"
# A report of a collector sharing an events queue that has not been renewed for this long is of a
# collector gone without a clean stop (killed, its host lost): the running ones delete it.
GONE_REPORT_SECONDS = 3600.0

# Counters that add up across the collectors of one queue; backlogs too, each holds its own.
_SUMMED = ("received", "merged", "stored", "dropped", "rejected", "truncated", "disconnects", "malformed",
           "skipped_standby", "gaps", "backlog", "backlog_spooled_bytes")
_LATEST = ("last_stored_at", "tasks_stored_at", "updated_at")


def report_key(broker: str, owner: str | None = None) -> str:
    """The meta key of a broker's report: the lease holder's, or with `owner` that collector's own."""
    return f"{REPORT_PREFIX}{broker} {owner}" if owner else f"{REPORT_PREFIX}{broker}"


def by_broker(reports: dict[str, dict]) -> dict[str, list[dict]]:
    """The stored reports (by key, less REPORT_PREFIX) grouped by the broker they name."""
    grouped: dict[str, list[dict]] = {}
    for key, report in reports.items():
        grouped.setdefault(report.get("broker") or key, []).append(report)
    return grouped


def collector_answer(reports: dict[str, dict]) -> dict:
    """/api/collector's answer from the reports by broker: the one broker's ({} before any report);
    with several brokers, {"brokers": each one's}."""
    if len(reports) > 1:
        return {"brokers": reports}
    return next(iter(reports.values()), {})


def is_live(report: dict, now: float, stall_seconds: float) -> bool:
    """Whether the collector runs and reported within `stall_seconds`."""
    return report.get("running") is not False and now - (report.get("updated_at") or 0) <= stall_seconds


def merged(reports: list[dict], now: float, stall_seconds: float) -> dict:
    """One broker's report from its collectors' (one, or those sharing an events queue).

    The live ones add their counters up; the lag is the largest. The broker is reached while one of
    them reaches it (`disconnected_collectors` counts the others), and a store error of any is the
    broker's. A collector that stopped cleanly leaves the count; one that went silent is counted in
    `silent_collectors` for GONE_REPORT_SECONDS. With none live, the latest report says how it ended."""
    if not reports:
        return {}
    live = [report for report in reports if is_live(report, now, stall_seconds)]
    if not live:
        latest = max(reports, key=lambda report: report.get("updated_at") or 0)
        return {**latest, "collectors": [], "silent_collectors": 0, "disconnected_collectors": 0}
    first = live[0]
    one = {**first, **{key: sum(report.get(key) or 0 for report in live) for key in _SUMMED}}
    for key in _LATEST:  # of every report: a collector gone may have stored the latest tasks
        one[key] = max((report.get(key) for report in reports if report.get(key) is not None), default=None)
    failing_since = [report["writer_failing_since"] for report in live if report.get("writer_failing_since")]
    cut_off = [report for report in live if not report.get("connected")]
    one.update(
        lag_seconds=max(report.get("lag_seconds") or 0.0 for report in live),
        connected=len(cut_off) < len(live),
        disconnected_collectors=len(cut_off),
        broker_error=next((report["broker_error"] for report in cut_off if report.get("broker_error")), None),
        writer_error=next((report["writer_error"] for report in live if report.get("writer_error")), None),
        last_error=next((report["last_error"] for report in live if report.get("last_error")), None),
        writer_failing_since=min(failing_since, default=None),
        owner=first.get("owner") if len(live) == 1 else None,
        collectors=sorted(_recording(report) for report in live),
        silent_collectors=sum(1 for report in reports if report.get("running") is not False
                              and stall_seconds < now - (report.get("updated_at") or 0) <= GONE_REPORT_SECONDS),
    )
    return one


def _recording(report: dict) -> str:
    """Who records the broker for this report: its collector, or for a standby the lease holder."""
    return (report.get("lease_holder") if report.get("role") == "standby" else report.get("owner")) or ""
