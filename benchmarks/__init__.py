"""Troupe's benchmark harness: ``python -m benchmarks [--quick] [--runs N] [--only NAME]``.

Each scenario is measured beside a baseline in the same run and reported as
the median of N runs in one markdown table.  Speed and memory are measured
here, never asserted in tests.
"""
