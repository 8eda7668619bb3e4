"""The launchers: the ``fedtier`` command, the sandbox, health checks, certificates.

They sit above the components (reducer, combiners, clients) and start them; the
foundation in ``fedtier/`` imports none of them (tests/test_layering.py).
"""
