"""The reducer's production HTTP server (reducer/serve.py): under load, against slow clients,
over TLS, and on SIGTERM. Real reducer processes over real sockets throughout."""
from __future__ import annotations

import io
import signal
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import ProcessGroup, free_port, positive, run_bench, wait_for_port
from fedtier.launch.certs import ServerSpec, issue_server_cert
from fedtier.helpers import get_helper

helper = get_helper("numpy")
MiB = 1 << 20


def seed_bytes(mib: float) -> bytes:
    return helper.to_bytes({"w": np.arange(max(1, int(mib * MiB) // 4), dtype=np.float32)})


def start_reducer(procs: ProcessGroup, tmp_path: Path, name: str = "reducer", **env: str) -> tuple[str, int]:
    port = free_port()
    proc = procs.start(name, "reducer", "--host", "127.0.0.1", "--port", str(port),
                       env={"FEDTIER_DATA_DIR": str(tmp_path / name), **env})
    wait_for_port(port, proc=proc)
    return f"http://127.0.0.1:{port}", port


@pytest.mark.timeout(90)
def test_concurrent_gets_and_assigns_while_a_session_runs_are_all_answered(procs: ProcessGroup,
                                                                           tmp_path: Path) -> None:
    url, _ = start_reducer(procs, tmp_path, FEDTIER_HTTP_THREADS="8")  # far fewer threads than callers
    combiner_port = free_port()
    procs.start("combiner", "combiner", "--name", "c0", "--host", "127.0.0.1", "--port", str(combiner_port),
                "--reducer", url, env={"FEDTIER_DATA_DIR": str(tmp_path / "c0")})
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/assign", params={"name": "first"}, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, procs.dump_logs()
        time.sleep(0.2)
    assert requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(seed_bytes(0.01)))},
                         timeout=10).status_code == 201
    # a session that waits for a client that never comes: it runs throughout the storm
    started = requests.post(f"{url}/start", json={"rounds": 1, "clients_required": 1, "wait_for_clients": 60},
                            timeout=10)
    assert started.status_code == 201, started.text
    session_url = f"{url}/api/v1/sessions/{started.json()['session_id']}"

    calls = [("get", f"{url}/api/v1/status"), ("get", f"{url}/api/v1/combiners"), ("get", f"{url}/"),
             ("get", session_url)] * 50 + [("get", f"{url}/assign?name=storm-{k}") for k in range(200)]

    def call(method_url: tuple[str, str]) -> int:
        with requests.Session() as s:  # a connection of its own, as separate clients have
            return s.get(method_url[1], timeout=30).status_code

    with ThreadPoolExecutor(100) as pool:
        codes = list(pool.map(call, calls))
    assert len(codes) == 400 and set(codes) == {200}, sorted(set(codes))
    assert requests.get(session_url, timeout=5).json()["status"] == "running"
    assert len(requests.get(f"{url}/api/v1/clients", timeout=5).json()) == 201  # "first" and every storm client


def _tls_socket(port: int, ca: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")


def _closed_after(sock: socket.socket, trickle: bytes, every_s: float, limit_s: float) -> float:
    """Send ``trickle`` a byte every ``every_s`` until the server closes; seconds it took."""
    start = time.monotonic()
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(every_s)
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except (TimeoutError, ssl.SSLWantReadError):
            pass  # still open: send the next byte
        except OSError:  # reset or broken pipe: closed
            return time.monotonic() - start
        if time.monotonic() - start > limit_s:
            break
    return time.monotonic() - start


@pytest.mark.timeout(60)
def test_slow_clients_are_cut_off_and_block_nobody_over_https(procs: ProcessGroup, tmp_path: Path) -> None:
    """A client that sends its headers, or its body, a byte at a time is cut off after the
    header timeout or below the body rate (a read timeout alone never fires: each byte
    resets it), and one that connects and says nothing, not even a TLS hello, holds up no
    other client meanwhile."""
    certs = tmp_path / "certs"
    cert, key = issue_server_cert(certs, ServerSpec.parse("reducer=localhost,127.0.0.1"))
    _, port = start_reducer(procs, tmp_path, FEDTIER_TLS_CERT=str(cert), FEDTIER_TLS_KEY=str(key),
                            FEDTIER_HTTP_HEADER_TIMEOUT_SECONDS="2", FEDTIER_HTTP_IDLE_TIMEOUT_SECONDS="30",
                            FEDTIER_HTTP_MIN_BODY_RATE="100")
    ca = certs / "ca.pem"
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # no TLS hello
    try:
        start = time.monotonic()
        status = requests.get(f"https://localhost:{port}/api/v1/status", verify=str(ca), timeout=10)
        assert status.status_code == 200 and time.monotonic() - start < 1.5
        plain = requests.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=10)  # HTTPS only, and says so
        assert plain.status_code == 400 and "https://" in plain.text

        def slow_headers() -> float:
            slow = _tls_socket(port, ca)
            try:
                return _closed_after(slow, b"GET /api/v1/status HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200,
                                     every_s=0.2, limit_s=15)
            finally:
                slow.close()

        def slow_body() -> float:
            slow = _tls_socket(port, ca)  # headers at once, then the body at 5 bytes/s
            try:
                slow.sendall(b"POST /start HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n")
                return _closed_after(slow, b"{" + b" " * 998 + b"}", every_s=0.2, limit_s=15)
            finally:
                slow.close()

        with ThreadPoolExecutor(2) as both:  # at once, each on its own connection: each is cut off by itself
            headers_took, body_took = both.submit(slow_headers), both.submit(slow_body)
            headers_took, body_took = headers_took.result(), body_took.result()
        assert 1.5 < headers_took < 6, headers_took  # the header timeout (2 s), far below the idle timeout (30 s)
        assert "its request headers did not arrive within 2s" in procs.log("reducer")
        assert 1.5 < body_took < 6, body_took  # 2 s of grace, then 100 bytes/s: never reached
        assert "its request body arrived slower than 100 bytes/s (FEDTIER_HTTP_MIN_BODY_RATE)" in procs.log("reducer")
        for sock in silent:  # the silent ones were cut off by the same deadline
            sock.settimeout(5)
            assert sock.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.timeout(60)
def test_sigterm_lets_requests_in_flight_finish_within_the_bound(procs: ProcessGroup, tmp_path: Path) -> None:
    url, port = start_reducer(procs, tmp_path, FEDTIER_HTTP_SHUTDOWN_SECONDS="4")
    seed = seed_bytes(48)  # more than loopback's socket buffers hold
    reply = requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(seed))}, timeout=30)
    assert reply.status_code == 201, reply.text
    download_url = f"{url}/api/v1/models/{reply.json()['model']['id']}/download"
    steady = requests.get(download_url, stream=True, timeout=30)
    stalled = requests.get(download_url, stream=True, timeout=30)  # a client that stops reading
    received = bytearray(steady.raw.read(MiB))
    stalled.raw.read(MiB)

    procs.procs["reducer"].send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    deadline = stopped_at + 2
    while time.monotonic() < deadline:  # it stops accepting at once
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.1)
        except OSError:
            break
    else:
        pytest.fail("the reducer still accepts connections 2 s after SIGTERM")
    for chunk in steady.iter_content(MiB):  # the request in flight runs to its end, at a reader's pace
        received += chunk
        time.sleep(0.02)
    assert bytes(received) == seed
    assert procs.procs["reducer"].wait(15) == 0
    assert time.monotonic() - stopped_at < 4 + 2 + 5  # the bound, the stop's margin, and closing the stores
    assert "requests still running after 4s (FEDTIER_HTTP_SHUTDOWN_SECONDS) are cut off" in procs.log("reducer")
    stalled.close()


def test_request_line_and_headers_over_the_bound_are_refused_naming_it(procs: ProcessGroup, tmp_path: Path) -> None:
    url, _ = start_reducer(procs, tmp_path, FEDTIER_MAX_HTTP_HEADER_BYTES="4096")
    assert requests.get(f"{url}/api/v1/status", headers={"X-Big": "a" * 3000}, timeout=5).status_code == 200
    refused = requests.get(f"{url}/api/v1/status", headers={"X-Big": "a" * 5000}, timeout=5)
    assert refused.status_code == 413 and "FEDTIER_MAX_HTTP_HEADER_BYTES" in refused.text, refused.text
    long_line = requests.get(f"{url}/api/v1/status?x={'a' * 5000}", timeout=5)
    assert long_line.status_code == 414 and "FEDTIER_MAX_HTTP_HEADER_BYTES" in long_line.text
    # a body no route takes is refused by the server before the app sees it, naming the largest bound
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as raw:
        raw.sendall(b"POST /seed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (5 << 30))
        reply = raw.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413") and b"FEDTIER_MAX_MODEL_BYTES" in reply, reply
    # a JSON route's own bound is still the app's, named in its JSON error
    too_big = requests.post(f"{url}/start", data=b"{" + b" " * (2 * MiB) + b"}",
                            headers={"Content-Type": "application/json"}, timeout=10)
    assert too_big.status_code == 413 and too_big.json()["limit"] == "FEDTIER_MAX_JSON_BODY_BYTES"


@pytest.mark.timeout(90)
def test_join_storm_bench_smoke(tmp_path: Path) -> None:
    import json

    out = tmp_path / "storm.json"
    done = run_bench("join_storm.py", "--smoke", "--json", str(out))
    assert "Join storm" in done.stdout and "ratio cheroot/Werkzeug" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["clients"] == 50
    for server in ("werkzeug", "cheroot"):
        s = result["servers"][server]
        assert s["calls"] == 50 and positive(s["p50_ms"]) and s["p99_ms"] >= s["p50_ms"]
    assert result["servers"]["cheroot"]["errors"] == 0
    assert all(positive(v) for v in result["ratios"].values())
