"""Runnable examples of ef_middleware (not part of the installed package)."""
