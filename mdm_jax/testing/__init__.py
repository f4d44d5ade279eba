"""Helpers for tests and benchmarks that make real input files."""
