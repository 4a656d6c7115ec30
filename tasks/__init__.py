"""Benchmarks, one module each. Importing this package registers every task."""

from tasks import amber, cvbench, mmhal, mmvp, object_halbench, pope, toy  # noqa: F401
