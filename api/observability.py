"""Prometheus metrics for the API: request counts and latencies by route, jobs by status.

A registry per app (not the global one) so several apps in one process (tests) do not clash.
The middleware is plain ASGI (no BaseHTTPMiddleware) to keep streaming and latency intact, and
labels by route template (`/v1/fine_tuning/jobs/{job_id}`) so label cardinality stays bounded.
A request whose client went away before it was complete (an upload cut mid-way) is counted with
status 499, nginx's "client closed request" (api/errors.py), never as a 500.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from store.models import Job


class Observability:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dora_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("dora_http_request_seconds", "HTTP request latency until the response starts",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.publish_failures = Counter("dora_publish_failures_total", "Job messages the broker refused",
                                        registry=self.registry)
        self.jobs_created = Counter("dora_jobs_created_total", "Fine-tuning jobs created", registry=self.registry)

    def watch_jobs(self, sessionmaker) -> None:
        self.registry.register(_JobStatusCollector(sessionmaker))


class _JobStatusCollector:
    """`dora_jobs{status=...}` read from SQL at scrape time (SQL is the truth)."""

    def __init__(self, sessionmaker) -> None:
        self.sessionmaker = sessionmaker

    def describe(self):
        return []

    def collect(self):
        gauge = GaugeMetricFamily("dora_jobs", "Fine-tuning jobs by status", labels=["status"])
        try:
            with self.sessionmaker() as session:
                for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
                    gauge.add_metric([status], count)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blinked
            pass
        yield gauge


class MetricsMiddleware:
    def __init__(self, app, observability: Observability) -> None:
        self.app, self.obs = app, observability

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                self.obs.latency.labels(scope["method"], template).observe(time.perf_counter() - started)
                self.obs.requests.labels(scope["method"], template, str(status[0])).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)
