"""Google Cloud Run v2 jobs (extra `gcp`); see backend.py for the design."""

from agent.backends.cloud_run.backend import CloudRunBackend

__all__ = ["CloudRunBackend"]
