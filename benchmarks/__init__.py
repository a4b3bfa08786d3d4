"""Benchmarks: run by hand (``python -m benchmarks.overhead``), never as timed tests."""
