"""fedtier: a tiered federated learning network (reducer, combiners, clients)."""
__version__ = "0.1.0"
