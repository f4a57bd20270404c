"""Observability: structured logging, secret redaction, shipping run logs to the server."""
