"""Who may call what on a combiner, one rule for every RPC.

Every caller presents a signed credential (fedtier/identity.py) as ``authorization: Token
<t>`` metadata, and the combiner checks it with the federation's verify key alone:

- ``Combiner`` (Connect, heartbeats, tasks, reports): a ``client`` credential. The name a
  client gives in a request must be the one its credential names (the servicers check
  that with :meth:`IdentityInterceptor.identity`), so no client can act as another.
- ``ModelTransfer``: a ``client`` credential, or the reducer's credential for this combiner.
- ``Control`` (rounds, model adoption, configuration): only the reducer's credential whose
  audience is this combiner, so a credential captured from one combiner opens no other.
  ``Control.Status`` also takes this combiner's own ``combiner`` credential (its healthcheck).

Without a verify key the combiner trusts every caller and every name (a single-machine
sandbox) and says so loudly in its log at start-up.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Callable

import grpc

from fedtier.identity import CredentialError, Identity, NotPermitted, Verifier

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
CONTROL, COMBINER, TRANSFER = "/fedtier.Control/", "/fedtier.Combiner/", "/fedtier.ModelTransfer/"
STATUS = CONTROL + "Status"


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


def presented_token(context: grpc.ServicerContext) -> str | None:
    metadata = dict(context.invocation_metadata() or ())
    return parse_authorization(metadata.get(METADATA_KEY))


class IdentityInterceptor(grpc.ServerInterceptor):
    """Checks every call's credential against the method's roles (the module docstring)."""

    def __init__(self, verifier: Verifier | None, name: str) -> None:
        self.verifier = verifier
        self.name = name  # this combiner: the audience of the reducer's credentials for it

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def _roles(self, method: str) -> tuple[str, ...]:
        if method == STATUS:
            return ("reducer", "combiner")
        if method.startswith(CONTROL):
            return ("reducer",)
        if method.startswith(COMBINER):
            return ("client",)
        if method.startswith(TRANSFER):
            return ("client", "reducer")
        return ()

    def check(self, method: str, token: str | None) -> Identity:
        """The caller's identity if it may call ``method``; CredentialError says why not."""
        assert self.verifier is not None
        roles = self._roles(method)
        identity = self.verifier.verify(token, roles=roles, audience=self.name)
        if method == STATUS and identity.role == "combiner" and identity.name != self.name:
            raise NotPermitted(f"combiner credential for {identity.name} is not valid on combiner {self.name}")
        return identity

    def caller(self, context: Any) -> Identity | None:
        """The verified caller of a call the interceptor let through; None when identities are
        not checked; CredentialError when it expired since the interceptor looked. (The
        verifier's cache makes this a lookup, not a second signature check.) For handlers of
        either server, synchronous or asyncio, which abort each in their own way."""
        if self.verifier is None:
            return None
        return self.verifier.verify(presented_token(context), audience=self.name)

    def identity(self, context: grpc.ServicerContext) -> Identity | None:
        """:meth:`caller`, aborting the (synchronous) call when the credential no longer holds."""
        try:
            return self.caller(context)
        except CredentialError as exc:  # it expired since the interceptor looked
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort raises; this keeps type checkers informed

    def may_name(self, context: grpc.ServicerContext) -> bool:
        """Whether this call may choose an uploaded model's id: only the reducer's (or anyone's
        when identities are not checked, as the start-up log says)."""
        caller = self.identity(context)
        return caller is None or caller.role == "reducer"

    def may_name_caller(self, context: Any) -> tuple[bool, str | None]:
        """(:meth:`may_name`, the caller's client name or None), raising CredentialError as
        :meth:`caller` does: what an upload needs to know of its sender, on either server."""
        caller = self.caller(context)
        return (caller is None or caller.role == "reducer",
                caller.name if caller is not None and caller.role == "client" else None)

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        return self.screen(continuation(details), details)

    def screen(self, handler: Any, details: grpc.HandlerCallDetails, aio: bool = False) -> Any:
        """``handler`` if the call's credential may call its method, else one that refuses it
        (a coroutine for an asyncio server, which runs a plain streaming handler on its loop)."""
        if handler is None or self.verifier is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        token = parse_authorization(metadata.get(METADATA_KEY))
        if token is None:
            message = f"{details.method} requires a credential ('authorization: Token ...' metadata)"
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, message, aio)
        try:
            self.check(details.method, token)
        except CredentialError as exc:
            log.warning("refused a call to %s: %s", details.method, exc)
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED if isinstance(exc, NotPermitted)
                             else grpc.StatusCode.UNAUTHENTICATED, f"{details.method}: {exc}", aio)
        return handler


class AioIdentityInterceptor(grpc.aio.ServerInterceptor):
    """The same rule on an asyncio server (grpc.aio takes only its own interceptors)."""

    def __init__(self, rule: IdentityInterceptor) -> None:
        self.rule = rule

    async def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        return self.rule.screen(await continuation(details), details, aio=True)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
              aio: bool = False) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts with ``code``."""

    def abort(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    async def abort_aio(request_or_iterator: Any, context: Any) -> None:
        await context.abort(code, message)

    refuse = abort_aio if aio else abort
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)


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
    """Adds the token to every call made on a channel; a callable is asked on each call (the
    reducer's credentials are re-minted before they expire)."""

    def __init__(self, token: str | Callable[[], str]) -> None:
        self.token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        token = self.token() if callable(self.token) else self.token
        return _ClientCallDetails(details, [*(details.metadata or ()), (METADATA_KEY, f"Token {token}")])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)
