"""Monitoring of deployed endpoints: captured-traffic readers, drift and grounding monitors, alert sinks.

Here so far: ``monitoring.alerts`` (the alert contract: Signal, Alert and its JSON schema, AlertBook with
de-duplication, cooldown, hysteresis and the outbox) and ``monitoring.sinks`` (SNS, Pub/Sub, webhook,
CloudWatch and log sinks named by URI, and ``deliver``). Readers, descriptors, drift, grounding and the
poller arrive with the rest of the monitoring work.
"""
