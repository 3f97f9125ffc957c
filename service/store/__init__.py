"""The decision store shared by the worker (writes) and the gateway (reads): SQLite or PostgreSQL."""

from service.store.decisions import DecisionStore, NewDecision, StoredDecision

__all__ = ["DecisionStore", "NewDecision", "StoredDecision"]
