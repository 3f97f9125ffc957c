"""The decision store shared by the worker (writes) and the gateway (reads): SQLite or PostgreSQL."""

from service.store.decisions import DecisionStore, NewDecision, StoredDecision, brief_error
from service.store.evidence import StoredEvidence
from service.store.migrate import SchemaNotCurrent

__all__ = [
    "DecisionStore",
    "NewDecision",
    "SchemaNotCurrent",
    "StoredDecision",
    "StoredEvidence",
    "brief_error",
]
