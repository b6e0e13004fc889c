"""Fuzzing of lockgate's network entry points.

``targets`` has one target per entry point with its contract, ``strategies`` the
structure-aware hypothesis strategies, ``mutate`` the wire edits, ``world`` the
in-memory fixtures. ``tests/fuzz/test_*`` are the regular-suite samples;
``bench/fuzz.py`` is the dedicated, bounded run of 100,000+ cases and
``bench/fuzz_atheris.py`` the coverage-guided one. ``tests/fuzz/corpus/`` keeps inputs
that once broke something.
"""
