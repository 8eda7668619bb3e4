"""``fedtier health``: exit 0 only when a reducer or a combiner really answers.

Made for container healthchecks (``docker compose`` runs it inside the container):

    fedtier health --http http://localhost:8090/api/v1/status   # the reducer's REST API
    fedtier health --grpc localhost:12080 --as combiner-0       # a combiner's Control.Status RPC

An open port is not enough: the HTTP check needs a 2xx answer, the gRPC check a
``CombinerStatus`` reply. Exit status 0 means healthy, 1 unhealthy (Docker reserves 2).
The check presents the credentials and trusts the CA of the process's own settings, as
the service it checks does: over HTTP the admin token (``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``),
else ``FEDN_ALLIANCE_AUTH_TOKEN``; over gRPC the combiner's own credential
(``FEDN_ALLIANCE_AUTH_TOKEN``, or ``NAME.token`` in ``FEDTIER_CREDENTIALS_DIR`` with
``--as NAME``), which its ``Control.Status`` accepts; ``FEDTIER_TLS_CA`` for https:// URLs
and TLS combiners.
HTTP proxies from the environment are ignored: the check talks to the service directly.
"""
from __future__ import annotations

import argparse
import http.client
import ssl
import sys
import urllib.error
import urllib.request

from fedtier.config import Settings
from fedtier.identity import CredentialError, own_credential

HEALTHY, UNHEALTHY = 0, 1


class Unhealthy(Exception):
    """The service did not answer as a healthy one; the message says what happened."""


def check_http(url: str, timeout: float = 5.0, token: str = "", ca_file: str | None = None) -> str:
    """GET ``url``; healthy on a 2xx answer. Returns a one-line description."""
    if not url.startswith(("http://", "https://")):
        raise Unhealthy(f"--http needs an http:// or https:// URL, got {url!r}")
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ca_file:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
    opener = urllib.request.build_opener(*handlers)
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers, method="GET"), timeout=timeout) as reply:
            reply.read(1 << 16)
            return f"{url} answered {reply.status}"
    except urllib.error.HTTPError as exc:  # a non-2xx answer: the service is up but not well
        raise Unhealthy(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unhealthy(f"{url} did not answer: {reason}") from None
    except (http.client.HTTPException, ValueError) as exc:  # something answered, but not HTTP (or a bad URL)
        raise Unhealthy(f"{url} did not answer HTTP: {exc.__class__.__name__} {exc}".rstrip()) from None


def check_grpc(address: str, timeout: float = 5.0, token: str = "", ca_file: str | None = None) -> str:
    """Call ``Control.Status`` on the combiner at ``HOST:PORT``. Returns a one-line description."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise Unhealthy(f"--grpc needs HOST:PORT, got {address!r}")
    import grpc

    from fedtier.reducer.combiner_client import CombinerClient

    client = CombinerClient(address, token=token, ca_file=ca_file)
    try:
        status = client.status(timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise Unhealthy(f"combiner at {address} refused the credential presented (its own combiner "
                            f"credential: FEDN_ALLIANCE_AUTH_TOKEN or FEDTIER_CREDENTIALS_DIR with --as): "
                            f"{exc.details()}") from None
        raise Unhealthy(f"combiner at {address} did not answer Control.Status: "
                        f"{exc.code().name} {exc.details() or ''}".rstrip()) from None
    finally:
        client.close()
    busy = f", round {status.round_in_progress} in progress" if status.round_in_progress else ""
    return f"combiner {status.name} at {address} answered: {status.active_clients} active client(s){busy}"


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    ca_file = settings.tls_ca or None
    try:
        if args.http:
            message = check_http(args.http, args.timeout, settings.admin_auth_token or settings.auth_token, ca_file)
        else:
            # a combiner's Control.Status answers the reducer and the combiner itself (its own credential)
            token = own_credential(settings.auth_token, settings.credentials_dir, args.as_name) if args.as_name \
                else settings.auth_token
            message = check_grpc(args.grpc, args.timeout, token, ca_file)
    except (Unhealthy, CredentialError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return UNHEALTHY
    print(f"healthy: {message}")
    return HEALTHY


def add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="exit 0 when a reducer (--http) or a combiner (--grpc) answers; "
                                      "for container healthchecks")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--http", default="", metavar="URL",
                      help="GET this URL, healthy on a 2xx answer (e.g. http://localhost:8090/api/v1/status)")
    what.add_argument("--grpc", default="", metavar="HOST:PORT",
                      help="call the combiner's Control.Status RPC (e.g. localhost:12080)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    p.add_argument("--as", dest="as_name", default="", metavar="NAME",
                   help="with --grpc: present NAME's credential from FEDTIER_CREDENTIALS_DIR (the combiner's own)")
    p.set_defaults(run=cmd_health)
