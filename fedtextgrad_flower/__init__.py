"""FedTextGrad on Flower: a ServerApp running the same round loop as the in-process modules, and a
ClientApp that trains on its own node's data with its own LLM endpoints.

Run it with `flwr run .` (see docs/flower.md).
"""
