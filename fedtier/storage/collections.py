"""The names of the state store's collections, in one place.

Each collection is named once here so that a reader finds every kind of record the
reducer keeps, and two modules cannot disagree on a name (fedtier/storage/state_store.py
explains what a collection is; the names must match ``[a-z_]+``).
"""
from __future__ import annotations

SESSIONS = "sessions"        # sessions of rounds (reducer/control.py)
ROUNDS = "rounds"            # one record per round
VALIDATIONS = "validations"  # clients' validation reports
REDUCER = "reducer"          # the reducer's own state (its phase)
COMBINERS = "combiners"      # combiners that announced themselves (reducer/network.py)
CLIENTS = "clients"          # clients assigned to combiners
CLIENT_ROUNDS = "client_rounds"  # each client's part in each round, append-only (reducer/participation.py)
PACKAGES = "packages"        # compute packages uploaded (reducer/routes/package.py)
MODELS = "models"            # the model trail, append-only (reducer/trail.py)
PROMOTIONS = "promotions"    # which trail model is production, append-only history (reducer/trail.py)
SCHEDULES = "schedules"      # sessions started on a timer or on a new package (reducer/schedules.py)
