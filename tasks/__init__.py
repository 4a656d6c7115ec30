"""Benchmarks, one module each. Importing this package registers every task."""

from tasks import amber, mmhal, object_halbench, pope, toy  # noqa: F401
