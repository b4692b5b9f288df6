"""Helpers for metasup's tests (not shipped)."""
