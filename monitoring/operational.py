"""Operational signals a capture does not carry, from the cloud's own endpoint metrics.

Our serving container writes each request's status and latency into its capture records
(``eventMetadata.launcher``); SageMaker's own data capture does not. For a SageMaker endpoint the
window's error rate and p99 latency then come from CloudWatch's ``AWS/SageMaker`` namespace, over the
window's time span (a minute either side: CloudWatch's period):

* error rate = ``Invocation5XXErrors`` / ``Invocations`` (sums);
* p99 latency = ``ModelLatency``'s p99 (``ExtendedStatistics``; microseconds -> ms), or its maximum where
  the service answers no percentile.

    sagemaker_metrics("claims", "2026-12-01T10:00:00Z", "2026-12-01T10:05:00Z")   # {"error_rate": ..., ...}
"""

from __future__ import annotations

import datetime as dt

VARIANT = "AllTraffic"


def _time(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def sagemaker_metrics(endpoint: str, start: str, end: str, *, region: str | None = None) -> dict[str, float]:
    """The endpoint's error rate and p99 latency (ms) over [start, end] from CloudWatch; {} when
    CloudWatch has no invocations there."""
    from launcher import clouds

    cloudwatch = clouds.aws_client("cloudwatch", region)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
    span = {"StartTime": _time(start) - dt.timedelta(minutes=1), "EndTime": _time(end) + dt.timedelta(minutes=1), "Period": 60}

    def points(metric: str, **statistics) -> list[dict]:
        with clouds.aws_errors(f"CloudWatch metric AWS/SageMaker {metric} of endpoint {endpoint}", "cloudwatch:GetMetricStatistics"):
            return cloudwatch.get_metric_statistics(Namespace="AWS/SageMaker", MetricName=metric, Dimensions=dimensions,
                                                    **span, **statistics)["Datapoints"]

    invocations = sum(p.get("Sum", 0.0) for p in points("Invocations", Statistics=["Sum"]))
    if not invocations:
        return {}
    errors = sum(p.get("Sum", 0.0) for p in points("Invocation5XXErrors", Statistics=["Sum"]))
    out = {"error_rate": errors / invocations}
    latency = points("ModelLatency", Statistics=["Maximum"], ExtendedStatistics=["p99"])
    if latency:
        worst = max((p.get("ExtendedStatistics") or {}).get("p99", p.get("Maximum", 0.0)) for p in latency)
        out["latency_p99_ms"] = worst / 1000.0
    return out
