"""The ``fedtier`` command: one entry point, a subcommand per process kind.

``build_parser()`` is public so deployment files can be checked against it (the
compose tests parse every service's command with this parser).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from fedtier import __version__
from fedtier import limits
from fedtier.launch import control_cli
from fedtier.config import ConfigError, Settings, load_env_file, setup_logging
from fedtier.launch.health import add_health
from fedtier.memory import tune_allocator

if TYPE_CHECKING:
    from fedtier.client.conditions import Conditions

log = logging.getLogger("fedtier")


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set an event so every process shuts down the same orderly way."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _partition(text: str) -> tuple[int | None, int]:
    """``I/N``, or ``auto/N`` (index None: from the compose replica number, see fedtier.replica)."""
    try:
        first, count_text = text.split("/")
        index, count = None if first == "auto" else int(first), int(count_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 0/5, or auto/COUNT, got {text!r}") from None
    if index is None and count >= 1:
        return index, count
    if count < 1 or index is None or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"partition index must be in 0..{count - 1}, got {text!r}")
    return index, count


def _port(text: str) -> int:
    """A TCP port for an option: 0-65535 (0 turns the option's server off)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number is an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port number is 0-65535, got {port}")
    return port


def _count_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer option bounded to ``low..high`` (no upper bound without ``high``), refused by
    argparse with the bound named."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a count is an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


_at_least_one = _count_in(1)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds are a number, got {text!r}") from None
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"seconds must be above 0 and at most 86400, got {text}")
    return seconds


def _own_credential(settings: Settings, name: str, role: str) -> str:
    """This participant's credential, checked at start-up (not at its first call) when this
    process has the verify key: a credential for another name or role is a clear error now."""
    from fedtier.identity import CredentialError, load_verify_key, own_credential, verify

    try:
        token = own_credential(settings.auth_token, settings.credentials_dir, name)
        if token and settings.token_verify_key:
            found = verify(load_verify_key(settings.token_verify_key, "FEDTIER_TOKEN_VERIFY_KEY"), token,
                           roles=(role,))
            if found.name != name:
                raise CredentialError(f"the credential is for {role} {found.name!r}, not {name!r}")
    except CredentialError as exc:
        raise ConfigError(f"{role} {name}: FEDN_ALLIANCE_AUTH_TOKEN/FEDTIER_CREDENTIALS_DIR: {exc}") from None
    if not token:
        log.warning("%s %s presents no credential: it works only in a network that does not check identities",
                    role, name)
    return token


# ---------------------------------------------------------------- combiner
def cmd_combiner(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.combiner.server import CombinerServer, CombinerSettings, advertised_host, announce

    credential = _own_credential(settings, args.name, "combiner")
    if credential and not settings.identities:
        raise ConfigError(f"combiner {args.name} has a credential (FEDN_ALLIANCE_AUTH_TOKEN or "
                          "FEDTIER_CREDENTIALS_DIR) but no FEDTIER_TOKEN_VERIFY_KEY to check its clients' with: "
                          "set FEDTIER_TOKEN_VERIFY_KEY")
    if args.reducer and settings.identities and not credential:
        raise ConfigError(f"combiner {args.name} needs its combiner credential to announce itself: set "
                          f"FEDN_ALLIANCE_AUTH_TOKEN, or FEDTIER_CREDENTIALS_DIR holding {args.name}.token "
                          f"(fedtier token issue --role combiner --name {args.name})")
    server = CombinerServer(CombinerSettings(
        name=args.name, host=args.host, port=args.port,
        work_dir=Path(args.work_dir or settings.data_dir / "combiners" / args.name),
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        liveness=args.liveness, max_clients=args.max_clients, max_workers=args.max_workers,
        verify_key=settings.token_verify_key,
        tls_cert=settings.tls_cert, tls_key=settings.tls_key,
        metrics_port=(args.metrics_port if args.metrics_port is not None else settings.metrics_port) or None))
    stop = _stop_on_signals()
    port = server.start()
    if args.reducer:
        advertised = advertised_host(args.host, args.advertise_host, args.name)
        threading.Thread(target=announce, daemon=True,
                         args=(args.reducer, args.name, advertised, port, credential, stop),
                         kwargs={"verify": settings.tls_ca or True}).start()
    stop.wait()
    server.stop()
    return 0


def add_combiner(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("combiner", help="run a combiner (gRPC server for clients)")
    p.add_argument("--name", required=True, help="unique name in the network")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=12080, help="gRPC port (default 12080)")
    p.add_argument("--advertise-host", default="", help="host name clients use to reach this combiner (default: "
                                                         "--host; binding all interfaces, --name if it resolves, "
                                                         "else this machine's host name)")
    p.add_argument("--reducer", default="", help="reducer URL to announce to, e.g. http://reducer:8090")
    p.add_argument("--work-dir", default="", help="where models are kept (default $FEDTIER_DATA_DIR/combiners/NAME)")
    p.add_argument("--liveness", choices=("stream", "heartbeat"), default="stream",
                   help="what makes a client active: 'stream' (default), its open task stream, watched by the "
                        "transport; 'heartbeat', FEDn's rule, also a heartbeat within --heartbeat-timeout (for "
                        "an HTTP/2 proxy between clients and combiner that keeps streams open; see "
                        "combiner/registry.py)")
    p.add_argument("--heartbeat-interval", type=_positive_seconds, default=None,
                   help="seconds between client heartbeats (default 10 with --liveness stream, where they are "
                        "a fallback; 2 with --liveness heartbeat)")
    p.add_argument("--heartbeat-timeout", type=_positive_seconds, default=10.0,
                   help="silence after which a client is inactive, with --liveness heartbeat (default 10)")
    p.add_argument("--max-clients", type=_at_least_one, default=1000,
                   help="task streams (connected clients) this combiner holds at most (default 1000)")
    p.add_argument("--max-workers", type=_at_least_one, default=128,
                   help="threads for calls that block: uploads, downloads, reports; more wait (default 128)")
    p.add_argument("--metrics-port", type=_port, default=None,
                   help="serve Prometheus metrics on --host:PORT/metrics (default $FEDTIER_METRICS_PORT; 0: off)")
    p.set_defaults(run=cmd_combiner)


# ---------------------------------------------------------------- client
def cmd_client(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.client.client import ClientSettings, FedClient

    from fedtier.replica import resolve_client_identity

    name, index, count = resolve_client_identity(args.name, args.partition, settings.client_name_base)
    name = name or f"{settings.client_name_base}-{uuid.uuid4().hex[:8]}"
    attack = None
    if args.attack:
        from fedtier.client.attack import Attack

        if not settings.allow_attacks:
            raise ConfigError("--attack makes this client Byzantine, a lab tool (fedtier sandbox --byzantine): "
                              "refused unless FEDTIER_ALLOW_ATTACKS=true")
        attack = Attack.parse(args.attack)
    client_settings = ClientSettings(
        name=name, project=Path(args.project) if args.project else None, combiner=args.combiner or None,
        reducer_url=args.reducer or None, data_path=args.data_path or None,
        partition_index=index, num_partitions=count,
        work_dir=Path(args.work_dir or settings.data_dir / "clients" / name),
        token=_own_credential(settings, name, "client"), tls_ca=settings.tls_ca,
        package_sha256=args.package_sha256, attack=attack, conditions=_conditions(args.conditions))
    if client_settings.conditions is not None and client_settings.conditions.changes():
        log.warning("%s: lab conditions: %s", name, client_settings.conditions.describe())
    client = FedClient(client_settings)
    client.run(_stop_on_signals())  # its loop ends the task stream once the signal sets the event
    client.close()
    return 0


def _conditions(text: str) -> Conditions | None:
    """``fedtier client --conditions JSON``: one client's lab conditions (client/conditions.py)."""
    if not text:
        return None
    from fedtier.client.conditions import Conditions
    from fedtier.strict_json import loads

    try:
        data = loads(text)
    except ValueError as exc:
        raise ConfigError(f"--conditions: {exc}") from None
    return Conditions.from_dict(data, "--conditions")  # a ConditionsError names the key


def add_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run a client (connects out; opens no port)")
    p.add_argument("--project", default="", help="project folder with fedn.yaml (default: the compute package "
                                                 "uploaded to the reducer, verified before it runs)")
    p.add_argument("--package-sha256", default="", help="run only the reducer's compute package with this sha256")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--combiner", default="", help="combiner HOST:PORT to connect to directly")
    where.add_argument("--reducer", default="", help="reducer URL; the client asks it which combiner to use")
    p.add_argument("--name", default="", help="unique client name (default $CLIENT_NAME_BASE-<random>); "
                                              "'auto': $CLIENT_NAME_BASE-<docker compose replica number, or "
                                              "Kubernetes StatefulSet ordinal>")
    p.add_argument("--data-path", default="", help="where this client's data is (FEDN_DATA_PATH for the project)")
    p.add_argument("--partition", type=_partition, default=None, metavar="I/N",
                   help="use share I of N of a shared dataset (demos and tests); 'auto/N': share "
                        "<docker compose replica number - 1>, for 'docker compose up --scale client=N' "
                        "(in a Kubernetes StatefulSet: the pod's ordinal)")
    p.add_argument("--work-dir", default="", help="scratch space for models (default $FEDTIER_DATA_DIR/clients/NAME)")
    p.add_argument("--attack", default="", metavar="KIND[:K=V,...]",
                   help="lab only (needs FEDTIER_ALLOW_ATTACKS=true): be Byzantine with sign_flip[:scale=S], "
                        "scaling[:scale=S], noise[:sigma=S] or label_flip (fedtier/client/attack.py)")
    p.add_argument("--conditions", default="", metavar="JSON",
                   help="lab: this client's conditions as a JSON object, e.g. '{\"speed\": 0.25, \"upload_bps\": "
                        "1e6, \"dropout\": 0.1}' (docs/lab.md, \"Client conditions\")")
    p.set_defaults(run=cmd_client)


# ---------------------------------------------------------------- swarm
def cmd_swarm(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.client.swarm import run_swarm

    return run_swarm(args, settings, _stop_on_signals())


def add_swarm(sub: argparse._SubParsersAction) -> None:
    from fedtier.client.pool import MAX_WORKER_THREADS, MAX_WORKERS  # stdlib only until a pool is made

    p = sub.add_parser("swarm", help="run many clients in one process (load tests)")
    p.add_argument("--clients", type=int, required=True, help="how many clients this process runs")
    p.add_argument("--project", required=True, help="project folder with fedn.yaml (use python: entry points)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--combiner", default="", help="combiner HOST:PORT every client connects to directly")
    where.add_argument("--reducer", default="", help="reducer URL; each client asks it which combiner to use")
    p.add_argument("--name-prefix", default="", help="clients are PREFIX-0 .. PREFIX-N-1 "
                                                     "(default $CLIENT_NAME_BASE-swarm); unique per swarm")
    p.add_argument("--partition-count", type=int, default=0, help="shares of the data (default --clients)")
    p.add_argument("--partition-offset", type=int, default=0, help="client k uses share (OFFSET + k) %% COUNT")
    p.add_argument("--data-path", default="", help="data directory handed to every client")
    p.add_argument("--work-dir", default="", help="scratch space (default $FEDTIER_DATA_DIR/swarms/PREFIX)")
    p.add_argument("--start-interval", type=float, default=0.01, help="seconds between client starts")
    p.add_argument("--task-slots", type=int, default=None, help="tasks running at once in this process; 0: no "
                   "limit (see client/swarm.py; default 8, with --workers the larger of 8 and 2 x workers)")
    p.add_argument("--workers", type=_count_in(0, MAX_WORKERS), default=0,
                   help=f"worker processes that run the clients' train/validate tasks, each with the project "
                        f"loaded (0-{MAX_WORKERS}); this process then never imports the project's framework; "
                        f"default 0: tasks run in the clients' threads (client/pool.py)")
    p.add_argument("--worker-threads", type=_count_in(1, MAX_WORKER_THREADS), default=1,
                   help=f"CPU threads each worker may use (torch, OpenMP, BLAS; 1-{MAX_WORKER_THREADS}, default 1)")
    p.add_argument("--stats", default="", help="write per-client stats (connects, tasks done) to this JSON file")
    p.add_argument("--conditions", default="", metavar="FILE",
                   help="lab: JSON {\"clients\": [<conditions of client k> or null, ...]}, one entry per client "
                        "(docs/lab.md, \"Client conditions\")")
    p.add_argument("--stats-interval", type=float, default=2.0, help="seconds between stats writes and log lines")
    p.set_defaults(run=cmd_swarm)


# ---------------------------------------------------------------- lab
def cmd_lab(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.launch.lab import run_lab

    overrides = {"clients": args.clients, "rounds": args.rounds, "combiners": args.combiners, "seed": args.seed,
                 "data_path": args.data_path}
    if args.workers is not None:
        overrides["pool"] = {**_scenario_section(args.scenario, "pool"), "workers": args.workers}
    return run_lab(args.scenario, overrides, args.out or None, args.port, args.check, _stop_on_signals())


def _scenario_section(path: str, key: str) -> dict:
    """One section of the scenario file as written, for a flag that overrides one of its keys
    (unreadable or not a mapping: empty, and the full check reports the file's problem)."""
    from fedtier.launch.scenario import ScenarioError, parse_yaml

    try:
        data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, ScenarioError):
        return {}
    section = data.get(key) if isinstance(data, dict) else None
    return dict(section) if isinstance(section, dict) else {}


def add_lab(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="run a scenario of many unequal virtual clients on this machine (docs/lab.md)")
    p.add_argument("scenario", help="scenario file (YAML; docs/lab.md lists every setting)")
    p.add_argument("--out", default="", help="output folder (default lab-runs/SCENARIO-TIME; never an earlier run's)")
    p.add_argument("--check", action="store_true", help="check the scenario, print it with its defaults, start nothing")
    p.add_argument("--clients", type=int, default=None, help="override the scenario's clients")
    p.add_argument("--rounds", type=int, default=None, help="override the scenario's rounds")
    p.add_argument("--combiners", type=int, default=None, help="override the scenario's combiners")
    p.add_argument("--workers", type=int, default=None, help="override pool.workers (default one per core)")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--data-path", default=None, help="override the scenario's data_path")
    p.add_argument("--port", type=int, default=0, help="reducer HTTP port (default: a free one)")
    p.set_defaults(run=cmd_lab)


# ---------------------------------------------------------------- reducer
def cmd_reducer(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.reducer.serve import serve

    serve(settings, args.host, args.port or settings.reducer_port, args.helper, _stop_on_signals(),
          instance_id=args.instance_id)
    return 0


def add_reducer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reducer", help="run the reducer (REST API, web UI, global model trail)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=0, help="HTTP port (default $FEDN_REDUCER_PORT or 8090)")
    p.add_argument("--helper", default="numpy", help="helper that validates models: numpy, pytorch or keras")
    p.add_argument("--instance-id", default="", help="id reported as 'instance' in /api/v1/status (default: "
                                                     "random); a launcher passes its own to recognise its reducer")
    p.set_defaults(run=cmd_reducer)


# ---------------------------------------------------------------- sandbox
def cmd_sandbox(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.launch.sandbox import Sandbox, SandboxOptions

    options = SandboxOptions(project=Path(args.project), combiners=args.combiners, clients=args.clients,
                             rounds=args.rounds, exit_when_done=args.exit_when_done,
                             summary=Path(args.summary) if args.summary else None,
                             work_dir=Path(args.work_dir) if args.work_dir else None, port=args.port,
                             seed=Path(args.seed) if args.seed else None, data_path=args.data_path or None,
                             round_timeout=args.round_timeout, task=args.task,
                             partition=args.partition or None, startup_timeout=args.startup_timeout,
                             seed_value=args.seed_value, byzantine=args.byzantine or None,
                             settings=args.settings)
    return Sandbox(options, _stop_on_signals()).run()


def add_sandbox(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="run a whole network on this machine: reducer, combiners, clients")
    p.add_argument("--project", required=True, help="project folder with fedn.yaml and seed.py")
    p.add_argument("--combiners", type=int, default=2, help="number of combiners (default 2)")
    p.add_argument("--clients", type=int, default=5, help="number of clients (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds to run (default 3)")
    p.add_argument("--exit-when-done", action="store_true", help="stop everything once the rounds are done")
    p.add_argument("--summary", default="", help="write a JSON summary of the rounds to this file")
    p.add_argument("--work-dir", default="", help="where stores and logs go (default: a new temporary folder)")
    p.add_argument("--port", type=int, default=0, help="reducer HTTP port (default: a free one)")
    p.add_argument("--seed", default="", help="seed model file (default: made by the project's seed.py)")
    p.add_argument("--seed-value", type=int, default=None, metavar="N",
                   help="random seed for the project's seed.py (passed as --seed N; default: the "
                        "script's own, deterministic)")
    p.add_argument("--data-path", default="", help="data directory handed to every client")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds per round (default 300)")
    p.add_argument("--task", default="{}", help="JSON settings for the project's code, e.g. '{\"epochs\": 2}'")
    p.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds to wait for each start-up step, e.g. all clients connected (default 120)")
    p.add_argument("--partition", default="",
                   help="how the clients split the data: iid (default), dirichlet:alpha=0.5, kclass:k=2, "
                        "quantity:beta=0.5[,min_size=N], kclass_quantity:k=2,beta=0.5; add seed=N to any. "
                        "Sent to the clients as \"partition\" in the task config")
    p.add_argument("--byzantine", default="", metavar="KIND:fraction=F[,placement=one|spread][,K=V]",
                   help="lab: make a fraction of the clients attack (sign_flip, scaling, noise, label_flip), "
                        "all on combiner-0 (placement=one) or spread (default), e.g. "
                        "sign_flip:fraction=0.3,placement=one,scale=4 (docs/strategies.md)")
    p.add_argument("--settings", default="{}", help="JSON round settings added to the session's /start, e.g. "
                                                    "'{\"aggregator\": \"fedavg\"}'")
    p.set_defaults(run=cmd_sandbox)


# ---------------------------------------------------------------- certs
def cmd_certs(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.launch.certs import ServerSpec, ensure_ca, issue_server_cert

    out = Path(args.out)
    ensure_ca(out)
    for text in args.server:
        cert, key = issue_server_cert(out, ServerSpec.parse(text))
        print(f"{cert}\n{key}")
    print(f"{out / 'ca.pem'}  (give this to every client, combiner and the reducer as FEDTIER_TLS_CA)")
    return 0


def add_certs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="create a CA and TLS server certificates for the reducer and combiners")
    p.add_argument("--out", default="certs", help="folder for ca.pem and NAME.pem/NAME-key.pem (default certs)")
    p.add_argument("--server", action="append", default=[], metavar="NAME[=HOST,IP,...]",
                   help="a server certificate; NAME and each HOST become DNS names, each IP an IP SAN "
                        "(repeatable), e.g. --server reducer=localhost,127.0.0.1")
    p.set_defaults(run=cmd_certs)


# ---------------------------------------------------------------- token
def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier import identity

    if args.token_command == "keygen":
        signing, verify = identity.generate_keypair(Path(args.out))
        print(f"{signing}  (FEDTIER_TOKEN_SIGNING_KEY: the reducer and whoever issues credentials; keep it secret)")
        print(f"{verify}  (FEDTIER_TOKEN_VERIFY_KEY: the reducer and every combiner)")
        return 0
    if args.token_command == "issue":
        key_path = args.signing_key or settings.token_signing_key
        if not key_path:
            raise ConfigError("--signing-key (or FEDTIER_TOKEN_SIGNING_KEY) is required to issue credentials")
        try:
            lifetime = identity.parse_lifetime(args.expires)
        except ValueError as exc:
            raise ConfigError(f"--expires: {exc}") from None
        key = identity.load_signing_key(key_path, "--signing-key")
        for name in args.name:
            if not identity.NAME.match(name):
                raise ConfigError(f"--name must be 1-128 letters, digits, '.', '_' or '-', got {name!r}")
        out = Path(args.out) if args.out else None
        for name in args.name:
            token = identity.issue(key, args.role, name, lifetime)
            if out is None:
                print(token)
                continue
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{name}.token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token + "\n")
            print(f"{path}  ({args.role} {name}, expires in {args.expires})")
        return 0
    # show
    verify_path = args.verify_key or settings.token_verify_key
    if not verify_path:
        raise ConfigError("--verify-key (or FEDTIER_TOKEN_VERIFY_KEY) is required to check a credential")
    found = identity.verify(identity.load_verify_key(verify_path, "--verify-key"), args.token.strip())
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found.expires_at))
    print(f"{found.role} {found.name}  expires {expires}  id {found.token_id}"
          + (f"  audience {found.audience}" if found.audience else ""))
    return 0


def add_token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="make the federation's key pair and issue credentials to clients and combiners")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    k = tsub.add_parser("keygen", help="write a new signing key and verify key (refuses to overwrite)")
    k.add_argument("--out", required=True, help="folder for signing-key.pem (mode 0600) and verify-key.pem")
    i = tsub.add_parser("issue", help="issue a credential bound to a name (printed, or NAME.token in --out)")
    i.add_argument("--role", required=True, choices=("client", "combiner"), help="what the holder may do")
    i.add_argument("--name", required=True, action="append", help="the holder's name (repeatable: one each)")
    i.add_argument("--expires", default="90d", help="lifetime: 90d, 12h, 30m or seconds (default 90d)")
    i.add_argument("--signing-key", default="", help="signing key PEM (default $FEDTIER_TOKEN_SIGNING_KEY)")
    i.add_argument("--out", default="", help="write NAME.token files into this folder (FEDTIER_CREDENTIALS_DIR)")
    s = tsub.add_parser("show", help="check a credential and print whom it names")
    s.add_argument("token", help="the credential")
    s.add_argument("--verify-key", default="", help="verify key PEM (default $FEDTIER_TOKEN_VERIFY_KEY)")
    p.set_defaults(run=cmd_token)


# ---------------------------------------------------------------- package
def cmd_package(args: argparse.Namespace, settings: Settings) -> int:
    from fedtier.package import pack, sha256_hex

    if args.path and args.project:
        raise ConfigError("give a PATH to upload or --project DIR to pack, not both")
    if args.path:  # fedtier package PATH: upload (launch/control_cli.py)
        return control_cli.cmd_package_upload(args, settings)
    if not args.project:
        raise ConfigError("--project DIR (pack it into --out) or a PATH to upload is required")
    data = pack(args.project)
    Path(args.out).write_bytes(data)
    print(f"{args.out}  {len(data)} bytes  sha256 {sha256_hex(data)}")
    return control_cli.cmd_package_upload(args, settings) if args.upload else 0


def add_package(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("package", help="pack a project folder into a compute package (--project), or upload "
                                       "one to the reducer (PATH)")
    p.add_argument("--project", default="", help="project folder with fedn.yaml to pack into --out")
    p.add_argument("--out", default="package.tgz", help="archive to write (default package.tgz)")
    control_cli.extend_package(p)
    p.set_defaults(run=cmd_package)


# ---------------------------------------------------------------- parser and main
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_reducer, add_combiner, add_client,
                                                                   add_sandbox, add_health, add_certs, add_package,
                                                                   add_swarm, add_lab, add_token,
                                                                   control_cli.add_control]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtier", description="A tiered federated learning network.")
    parser.add_argument("--version", action="version", version=f"fedtier {__version__}")
    parser.add_argument("--env-file", default=".env", help="read settings from this file if it exists (default .env)")
    parser.add_argument("--log-level", default="", help="DEBUG, INFO, WARNING or ERROR (default $FEDTIER_LOG_LEVEL or INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_env_file(args.env_file)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"fedtier: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or settings.log_level, name=f"[{args.command}]")
    limits.configure(settings.limits)  # with the .env file's FEDTIER_MAX_ values, read above
    tune_allocator()  # every command moves models in 1 MiB chunks (fedtier/memory.py says why)
    try:
        return args.run(args, settings)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:  # CredentialError is a ValueError
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
