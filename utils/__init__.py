"""Shared building blocks of the federated runs: tasks, data, scoring, partitioning and more."""
