"""Run a federated session from Python with fedtier's SDK (docs/sdk.md walks through it).

    python examples/sdk_quickstart.py --reducer http://localhost:8090 --seed seeds/digits.safetensors \
        --rounds 3 --clients 2 --out models/

It seeds the reducer (unless it has a model already), uploads a compute package if given
one, starts a session with typed settings, waits for it with a progress bar, prints each
round's metrics and downloads the final model, verified by its sha256. The token comes from
--token or FEDN_ALLIANCE_ADMIN_AUTH_TOKEN. Exit status 0 when the session succeeded.
"""
from __future__ import annotations

import argparse
import os
import sys

from fedtier.sdk import APIError, Conflict, Reducer, RoundSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reducer", default=os.environ.get("FEDTIER_REDUCER_URL", "http://localhost:8090"))
    parser.add_argument("--token", default=os.environ.get("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN"))
    parser.add_argument("--seed", help="seed model file, uploaded if the reducer has no model yet")
    parser.add_argument("--package", help="project folder (or packed .tgz) for clients started without --project")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="clients each round needs")
    parser.add_argument("--out", default=".", help="folder for the final model")
    args = parser.parse_args(argv)

    with Reducer(args.reducer, token=args.token) as reducer:
        try:
            if args.seed:
                try:
                    print("seeded", reducer.seed(args.seed)["id"])
                except Conflict as exc:  # seeded before: go on from the trail's latest model
                    print(f"not seeding: {exc.message} (state {exc.state})")
            if args.package:
                print("package", reducer.upload_package(args.package)["sha256"])

            settings = RoundSettings(clients_required=args.clients, round_timeout=120, validate=True)
            session = reducer.start(rounds=args.rounds, settings=settings)
            done = reducer.wait(session["id"], progress=True)
            for round_doc in reducer.rounds(session_id=session["id"]):
                print(f"round {round_doc['round']}  {round_doc['status']}  {round_doc.get('metrics')}")
            path = reducer.download_model("latest", args.out)
            print(f"session {done['status']}; final model {path} (sha256 verified)")
        except APIError as exc:  # the API's own message, with the field or state at fault
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0 if done["status"] == "succeeded" else 3


if __name__ == "__main__":
    sys.exit(main())
