"""Metrics, access log and the structured event log."""
