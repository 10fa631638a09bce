"""Prometheus metrics, on a registry owned by one app instance (no process-global collectors, so
tests and several apps in one process never share counts)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

# Set by `rpl-cds serve` for several workers: prometheus-client then keeps every worker's values
# in files there, and a scrape, answered by any one worker, reports the sum over all of them.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        self.requests = Counter(
            "rpl_cds_requests",
            "HTTP requests by endpoint, CDS service and status",
            ["endpoint", "service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rpl_cds_request_duration_seconds",
            "Time to answer, by endpoint and CDS service",
            ["endpoint", "service"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cards = Counter(
            "rpl_cds_cards",
            "Cards returned, by CDS service and recommendation topic",
            ["service", "topic"],
            registry=self.registry,
        )
        self.cards_suppressed = Counter(
            "rpl_cds_cards_suppressed",
            "Cards left out because the clinician had dealt with them for the patient",
            ["service", "topic"],
            registry=self.registry,
        )
        self.issued_dropped = Counter(
            "rpl_cds_issued_card_records_dropped",
            "Issued cards not recorded for analytics (the database was unavailable too long)",
            registry=self.registry,
        )
        self.rejected = Counter(
            "rpl_cds_requests_rejected",
            "Requests refused with 503 because the worker was at RPL_CDS_MAX_CONCURRENT_CALLS",
            registry=self.registry,
        )
        # Normally a few cards for at most 0.2 s; a count that stays up means the database is
        # refusing the writes. livesum: the workers' buffers add up, a dead worker's drop out.
        self.issued_pending = Gauge(
            "rpl_cds_issued_card_records_pending",
            "Issued cards held in memory, not yet recorded for analytics",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.fhir_fetch = Histogram(
            "rpl_cds_fhir_fetch_duration_seconds",
            "Time of each FHIR query made to the EHR's server",
            ["resource_type"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fhir_errors = Counter(
            "rpl_cds_fhir_fetch_errors",
            "FHIR queries that failed, by reason",
            ["reason"],
            registry=self.registry,
        )

    def exposition(self) -> CollectorRegistry:
        """What a scrape reports: this app's registry, or all workers' values when several
        processes serve."""
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not directory:
            return self.registry
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
        return combined
