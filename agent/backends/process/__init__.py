"""The local process backend: backend.py (launch, watch, kill, find), spawn.py (starting a
run under its supervisor), shim.py (the supervisor, standard library only), records.py
(what outlives the agent: each run's record and exit status)."""

from agent.backends.process.backend import ProcessBackend

__all__ = ["ProcessBackend"]
