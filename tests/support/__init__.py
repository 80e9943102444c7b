"""Helpers the tests share (conftest.py holds only fixtures and hooks)."""
