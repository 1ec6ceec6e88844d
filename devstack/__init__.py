"""The local stack of `make dev`, the tests and the bench: a Redis that answers, free
ports, and a supervisor of the system's processes.

Development only: pyproject.toml does not ship this package, and nothing in web/,
worker/ or shared/ may import it (tests/unit/test_shipped_imports.py checks)."""
