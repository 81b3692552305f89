"""Worked examples that ship with sagaflow (``sagaflow demo`` runs them)."""
