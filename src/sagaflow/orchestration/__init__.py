"""Orchestration: saga definitions, the Orchestrator and the saga log."""
