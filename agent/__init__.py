"""flow-agent: a lean, fast, crash-safe agent for Prefect servers.

The library side: `run_deployment` / `arun_deployment` trigger a deployment's run and
optionally wait for it (imported lazily, so `import agent` stays cheap for the agent).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "arun_deployment", "run_deployment"]


def __getattr__(name: str) -> Any:
    if name in ("run_deployment", "arun_deployment"):
        from agent import orchestrate

        return getattr(orchestrate, name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
