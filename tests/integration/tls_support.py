"""TLS test helpers: certificates made by trustme, and `portcullis run` with any listeners."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trustme
from harness import START_TIMEOUT, _stop_process, free_port


class Pki:
    """A test CA and helpers to write server and client certificates as files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self._n = 0

    def server_cert(self, *names: str, rsa: bool = False, cn: str | None = None) -> dict[str, str]:
        self._n += 1
        kind = trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA
        leaf = self.ca.issue_cert(*names, common_name=cn or names[0], key_type=kind)
        cert = self.dir / f"srv{self._n}.pem"
        key = self.dir / f"srv{self._n}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return {"cert": str(cert), "key": str(key)}

    def client_cert(self, name: str) -> trustme.LeafCert:
        return self.ca.issue_cert(name, common_name=name)

    def client_context(self, leaf: trustme.LeafCert | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if leaf is not None:
            leaf.configure_cert(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


class ListenerProxy:
    """`python3 -m portcullis run` with the listeners given (each gets a free port)."""

    def __init__(self, config: dict[str, Any], listeners: list[dict[str, Any]], workdir: Path, name: str) -> None:
        self.ports: dict[str, int] = {}
        cfg = dict(config)
        cfg["listeners"] = []
        for lst in listeners:
            port = int(lst["listen"].rsplit(":", 1)[1]) if "listen" in lst else free_port()
            self.ports[lst["name"]] = port
            cfg["listeners"].append({**lst, "listen": f"127.0.0.1:{port}"})
        self.cfg = cfg
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portcullis", "run", "-c", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
        )  # fmt: skip
        if not self._wait_ready(START_TIMEOUT):
            self.stop()
            raise RuntimeError(f"portcullis {name} did not start:\n{self.log_path.read_text()}")

    def _wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if b'"started"' in self.log_path.read_bytes() or b"portcullis is serving" in self.log_path.read_bytes():
                return True
            time.sleep(0.05)
        return False

    def port(self, name: str) -> int:
        return self.ports[name]

    def stop(self) -> None:
        _stop_process(self.proc)
        self._log.close()


def tls_connect(port: int, ctx: ssl.SSLContext, sni: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def https_get(
    port: int, ctx: ssl.SSLContext, sni: str | None, path: str = "/echo", host: str = "a.test",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP/1.1 request over TLS; returns status, headers, body and the server's certificate (DER)."""
    sock = tls_connect(port, ctx, sni)
    with sock:
        der = sock.getpeercert(binary_form=True) or b""
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in rest:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body, der


# =========================================================================== a raw HTTP/2 client

class H2Client:
    """A blocking HTTP/2 client on the `h2` state machine, for tests that need frame-level control."""

    def __init__(
        self, port: int, ctx: ssl.SSLContext | None = None, sni: str = "a.test", auto_ack: bool = True,
        settings: dict[int, int] | None = None,
    ) -> None:
        import h2.config
        import h2.connection

        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ctx is not None:
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=sni)
            assert isinstance(self.sock, ssl.SSLSocket) and self.sock.selected_alpn_protocol() == "h2"
        else:
            self.sock = raw
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.auto_ack = auto_ack
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.trailers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: Any = None
        self.closed = False
        self.unacked: dict[int, int] = {}
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: list[tuple[str, str]] | None = None,
        authority: str = "a.test", end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "https"), (":authority", authority)]
        hdrs += headers or []
        no_body = body is None and end
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in hdrs], end_stream=no_body)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True, timeout: float = 20.0) -> None:
        """Send respecting the server's flow-control windows (reading its WINDOW_UPDATEs)."""
        view = memoryview(body)
        deadline = time.monotonic() + timeout
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump(timeout=0.2)
                if time.monotonic() > deadline:
                    raise TimeoutError("server never opened its window")
                continue
            piece, view = view[:window], view[window:]
            self.conn.send_data(sid, piece.tobytes())
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def pump(self, timeout: float = 1.0) -> bool:
        """Read once (up to `timeout`); False when the connection is closed."""
        import h2.events

        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.headers[ev.stream_id] = list(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers[ev.stream_id] = list(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    self.unacked[ev.stream_id] = self.unacked.get(ev.stream_id, 0) + ev.flow_controlled_length
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        self.flush()
        return True

    def wait(self, predicate: Any, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end or self.closed:
                return bool(predicate())
            self.pump(0.2)
        return True

    def response(self, sid: int, timeout: float = 10.0) -> tuple[int, dict[bytes, bytes], bytes]:
        assert self.wait(lambda: sid in self.ended or sid in self.resets, timeout), f"stream {sid} unfinished"
        assert sid not in self.resets, f"stream {sid} reset: {self.resets[sid]}"
        hdrs = dict(self.headers[sid])
        return int(hdrs[b":status"]), hdrs, bytes(self.data.get(sid, b""))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
