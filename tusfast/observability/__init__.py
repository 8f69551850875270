"""Observability: Prometheus metrics (metrics.py) and Sentry error reporting (sentry.py)."""
