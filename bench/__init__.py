"""Benchmarks: they print figures and ratios against baselines measured in the
same run. They are never tests and assert nothing about time."""
