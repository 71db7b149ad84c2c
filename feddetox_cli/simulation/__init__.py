"""The federated simulation: a real coordinator and K edge clients as separate processes over gRPC on loopback.

It stands above the parts (DESIGN.md): it drives `feddetox coordinator serve` and `feddetox edge run` through
their commands and the REST API, exactly as a deployment would, and evaluates the global adapters.
"""
