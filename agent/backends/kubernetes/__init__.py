"""The Kubernetes Job backend (extra `kubernetes`): see backend.py for its behaviour."""

from agent.backends.kubernetes.backend import KubernetesBackend

__all__ = ["KubernetesBackend"]
