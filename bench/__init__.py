"""Benchmarks: each module prints one JSON object (figures, `parameters`, `platform`)."""
