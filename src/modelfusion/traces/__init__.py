"""The trace store: every fusion kept in SQLite or PostgreSQL (`store`)."""

from .store import SCHEMA_VERSION, TraceRecord, TraceStore, TraceSummary, migrate

__all__ = ["SCHEMA_VERSION", "TraceRecord", "TraceStore", "TraceSummary", "migrate"]
