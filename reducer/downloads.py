"""Serving stored bytes over HTTP so that damaged data is never a complete, successful response.

A model or package is checked against its sha256 as it streams (ModelStore.iter_chunks), and
that check can only finish after the last byte has been read. Reading everything twice (verify,
then send) would double the latency of every gigabyte download, so the response streams and the
store holds the last chunk back until the hash is known (ModelStore.iter_chunks): on a mismatch
the generator raises instead of sending it, and the WSGI server, which has already sent the
status line, closes the connection (cheroot and werkzeug both end a connection whose response failed).
The receiver then has fewer bytes than ``Content-Length`` promised, which every HTTP client
reports as a failed transfer (requests: ChunkedEncodingError, curl: exit 18), never as a 200.

What can be known before the first byte is checked before it, so that it becomes an ordinary
JSON error instead of a broken transfer: the store's record against the trail's (sha256, size),
the size of the data at rest (a truncated file), and a model that fits in the first two chunks
(verified whole before anything is sent). The sha256 goes with the response twice: as
``X-Model-SHA256``/``X-Package-SHA256`` (the project's own header) and as ``Repr-Digest``
(RFC 9530, a standard header a generic client can check).
"""
from __future__ import annotations

import base64
import logging
from typing import Iterator

from flask import Response, current_app

from fedtier.storage.model_store import ModelCorruptError, ModelStore, ModelStoreError

log = logging.getLogger(__name__)


def repr_digest(sha256_hex: str) -> str:
    """RFC 9530 ``Repr-Digest`` value for a hex sha256: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def stored_response(models: ModelStore, store_id: str, sha256: str, size: int, *, what: str,
                    mimetype: str, headers: dict[str, str]) -> Response:
    """A streaming response of the stored object ``store_id``, which the trail (or the packages
    collection) records as ``sha256``/``size``; ``what`` names it in errors and the log.

    Raises (before any byte: a JSON error via reducer/errors.py) ModelNotFoundError,
    ModelCorruptError if the store's record or the data at rest disagree with ``sha256``/``size``,
    or another ModelStoreError if the store cannot be read."""
    count = current_app.extensions["fedtier"].metrics.store_error  # an error mid-stream, outside the handlers
    stored = models.stat(store_id)
    if stored.sha256 != sha256 or stored.size != size:
        log.error("%s is damaged in the model store: it holds sha256 %s (%d bytes), recorded %s (%d bytes)",
                  what, stored.sha256, stored.size, sha256, size)
        raise ModelCorruptError(f"{what} is damaged in the model store: it holds sha256 {stored.sha256} "
                                f"({stored.size} bytes), not the recorded {sha256} ({size} bytes)")
    chunks = models.iter_chunks(store_id)
    try:
        first = next(chunks, None)  # a damaged small model fails here, as a JSON error
    except ModelCorruptError:
        log.error("%s is damaged in the model store; not served", what)
        raise

    def body() -> Iterator[bytes]:
        sent = 0
        try:
            if first is not None:
                sent += len(first)
                yield first
            for chunk in chunks:
                sent += len(chunk)
                yield chunk
        except ModelStoreError as exc:
            count(exc)
            # Raising here, with the status line already sent, is what breaks the transfer: the
            # server closes the connection short of Content-Length and the receiver sees a failure.
            damaged = "is damaged in the model store" if isinstance(exc, ModelCorruptError) \
                else "could not be read from the model store"
            log.error("%s %s: download aborted after %d of %d bytes, the receiver gets an incomplete "
                      "transfer (%s)", what, damaged, sent, size, exc)
            raise
        finally:
            # a receiver that went away: release the file or the S3 connection now, not at GC
            getattr(chunks, "close", lambda: None)()

    return Response(body(), mimetype=mimetype, headers={
        **headers, "Content-Length": str(size), "Repr-Digest": repr_digest(sha256)})
