"""Benchmarks behind ``elaria bench NAME``: each has ``run(quick) -> dict``, printed as JSON."""
