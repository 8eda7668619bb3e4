"""Token authentication for gRPC, one rule on both sides.

Clients and combiners present ``FEDN_ALLIANCE_AUTH_TOKEN`` (the network token); the
reducer presents ``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN`` (the admin token), which is also
the only token that opens the ``Control`` service, so a client holding the network
token cannot run rounds on a combiner. Tokens travel as ``authorization: Token <t>``
metadata and are compared in constant time. With no tokens configured, the server
lets every call through (a single-machine sandbox) and says so in its log.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Callable

import grpc

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
ADMIN_SERVICES = ("/fedtier.Control/",)


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison; an unset expected token never matches."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def parse_authorization(value: str | None) -> str | None:
    """Accept ``Token <t>`` (FEDn's form) and ``Bearer <t>``."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and token.strip():
        return token.strip()
    return None


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, network_token: str, admin_token: str) -> None:
        self.network_token = network_token
        self.admin_token = admin_token
        if not network_token and not admin_token:
            log.warning("gRPC authentication is OFF: set FEDN_ALLIANCE_AUTH_TOKEN and "
                        "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN to require tokens")

    @property
    def enabled(self) -> bool:
        return bool(self.network_token or self.admin_token)

    def admin_call(self, context: grpc.ServicerContext) -> bool:
        """Whether this call may act as the reducer: it presented the admin token, or no
        tokens are configured (then every caller may do everything, as the log says)."""
        if not self.enabled:
            return True
        metadata = dict(context.invocation_metadata() or ())
        return token_matches(parse_authorization(metadata.get(METADATA_KEY)), self.admin_token)

    def _allowed(self, method: str, token: str | None) -> bool:
        if token_matches(token, self.admin_token):
            return True
        if method.startswith(ADMIN_SERVICES):
            return False
        return token_matches(token, self.network_token)

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not self.enabled:
            return handler
        metadata = dict(details.invocation_metadata or ())
        token = parse_authorization(metadata.get(METADATA_KEY))
        if self._allowed(details.method, token):
            return handler
        which = "the admin token" if details.method.startswith(ADMIN_SERVICES) else "a valid network token"
        message = (f"{details.method} requires {which} ('authorization: Token ...' metadata)" if token is None
                   else f"{details.method}: the token presented is not valid here; {which} is required")
        log.warning("rejected unauthenticated call to %s", details.method)
        return _refusing(handler, message)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with UNAUTHENTICATED."""

    def abort(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    return grpc.stream_stream_rpc_method_handler(abort, **kwargs)


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call made on a channel."""

    def __init__(self, token: str) -> None:
        self.header = (METADATA_KEY, f"Token {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _ClientCallDetails(details, [*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)
