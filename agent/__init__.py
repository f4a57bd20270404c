"""flow-agent: a lean, fast, crash-safe agent for Prefect servers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
