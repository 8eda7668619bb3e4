"""Data tools for projects and the sandbox: partitioners and dataset readers.

Kept apart from the foundation's storage and transport: they serve projects'
training code, not the network.
"""
