"""Benchmarks, one module each. Importing this package registers every task."""

from tasks import toy  # noqa: F401
