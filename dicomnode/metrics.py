"""Prometheus metrics, one definition each."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INSTANCES = Counter("dicomnode_instances_received_total", "Instances stored")
BYTES = Counter("dicomnode_bytes_received_total", "Bytes stored")
ASSOCIATIONS = Counter("dicomnode_associations_total", "Associations by outcome", ["outcome"])
STORE_FAILURES = Counter("dicomnode_store_failures_total", "C-STORE requests not stored", ["reason"])
JOBS = Gauge("dicomnode_jobs", "Jobs by state", ["state"])
STAGE_SECONDS = Histogram(
    "dicomnode_stage_seconds",
    "Job stage durations",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
SEND_FAILURES = Counter("dicomnode_send_failures_total", "Result objects that failed to send", ["kind"])
AGREEMENT = Gauge(
    "dicomnode_review_agreement", "Share of reviewed discs where node and reviewer agree", ["finding", "window"]
)
REVIEWED_DISCS = Gauge("dicomnode_reviewed_discs", "Discs reviewed in the window", ["window"])
