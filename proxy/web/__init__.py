"""The small HTTP listener of ``mailcrm serve``: health, Prometheus metrics and the status page."""

from proxy.web.app import make_app, run_http

__all__ = ["make_app", "run_http"]
