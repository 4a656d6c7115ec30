"""Benchmarks, one module each. Importing this package registers every task."""

from tasks import amber, toy  # noqa: F401
