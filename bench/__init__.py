"""Benchmarks and the deterministic OpenAI-compatible latency server they (and the tests) run against."""
