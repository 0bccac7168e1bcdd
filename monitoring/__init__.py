"""Monitoring of deployed endpoints: captured-traffic readers, drift and grounding monitors, alert sinks.

Arrives with the serving and monitoring work; nothing here yet.
"""
