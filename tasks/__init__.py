"""Benchmarks, one module each. Importing this package registers every task."""

from tasks import (  # noqa: F401
    amber,
    cvbench,
    lab,
    lab_mmhal,
    llava_bench,
    mmhal,
    mmvet,
    mmvp,
    object_halbench,
    pope,
    scienceqa,
    textvqa,
    toy,
)
