"""Shared session-ticket keys: resumption across contexts (as across workers), rotation with one
interval of grace, keys bound to their listener, the master's rotation schedule. Handshakes run
in memory (MemoryBIO pairs), no sockets."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import NamedTuple

import pytest
import trustme

from portcullis.config.schema import Config, Listener, ListenerTls
from portcullis.supervisor.tickets import TicketRotation
from portcullis.tls import openssl, tickets
from portcullis.tls.tickets import TicketKeys, decode_secrets, listener_label


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("a.test", "b.test")


@pytest.fixture(scope="module")
def lib() -> openssl.LibSsl:
    found = openssl.load()
    if isinstance(found, openssl.Unavailable):
        pytest.skip(f"shared tickets unavailable here: {found}")
    return found


def _server(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    return ctx


class _Worker(NamedTuple):
    """A listener context with the shared keys, as one worker has it."""

    keys: TicketKeys
    ctx: ssl.SSLContext


def _shared(leaf: trustme.LeafCert, lib: openssl.LibSsl, secrets: list[bytes], label: bytes = b"web") -> _Worker:
    keys = TicketKeys(label, lib)
    keys.update(secrets)
    ctx = _server(leaf)
    assert keys.install(ctx)
    return _Worker(keys, ctx)


_clients: dict[tuple[int, bool], ssl.SSLContext] = {}


def _handshake(
    server: ssl.SSLContext, ca: trustme.CA, session: ssl.SSLSession | None = None, tls12: bool = False
) -> ssl.SSLObject:
    """One connection in memory; returns the client side after the server has written a byte
    (so TLS 1.3 tickets, sent after the handshake, have reached the client)."""
    client_ctx = _clients.get((id(ca), tls12))
    if client_ctx is None:  # a session may only be offered through the context that made it
        client_ctx = _clients[id(ca), tls12] = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        if tls12:
            client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="a.test", session=session)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done: set[int] = set()
    for _ in range(10):
        for index, side in enumerate((client, srv)):
            if index not in done:
                try:
                    side.do_handshake()
                    done.add(index)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            break
    assert len(done) == 2, "handshake did not finish"
    srv.write(b"x")
    c_in.write(s_out.read())
    assert client.read(1) == b"x"
    return client


def _session(server: ssl.SSLContext, ca: trustme.CA, tls12: bool = False) -> ssl.SSLSession:
    session = _handshake(server, ca, tls12=tls12).session
    assert session is not None and session.has_ticket
    return session


@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_a_ticket_from_one_context_resumes_on_another(
    leaf: trustme.LeafCert, ca: trustme.CA, lib: openssl.LibSsl, tls12: bool
) -> None:
    secrets = [os.urandom(32)]
    worker_a, worker_b = _shared(leaf, lib, secrets), _shared(leaf, lib, secrets)
    session = _session(worker_a.ctx, ca, tls12)
    assert worker_a.keys.issued >= 1
    for _ in range(3):  # the same ticket, again and again
        assert _handshake(worker_b.ctx, ca, session, tls12).session_reused
    assert worker_b.keys.resumed == 3
    # without the shared keys, each context has its own: the reason for all this
    assert not _handshake(_server(leaf), ca, session, tls12).session_reused


def test_rotation_keeps_the_previous_key_for_one_interval(
    leaf: trustme.LeafCert, ca: trustme.CA, lib: openssl.LibSsl
) -> None:
    first, second, third = (os.urandom(32) for _ in range(3))
    issuer = _shared(leaf, lib, [first])
    other = _shared(leaf, lib, [first])
    session = _session(issuer.ctx, ca)
    for worker in (issuer, other):
        worker.keys.update([second, first])  # one rotation: the ticket's key is the previous one
    again = _handshake(other.ctx, ca, session)
    assert again.session_reused and other.keys.renewed == 1
    fresh = again.session  # renewed: a ticket under the current key
    assert fresh is not None
    for worker in (issuer, other):
        worker.keys.update([third, second])  # two rotations: the first key is gone
    assert not _handshake(other.ctx, ca, session).session_reused
    assert other.keys.unknown >= 1
    assert _handshake(issuer.ctx, ca, fresh).session_reused


def test_keys_are_bound_to_their_listener(leaf: trustme.LeafCert, ca: trustme.CA, lib: openssl.LibSsl) -> None:
    secrets = [os.urandom(32)]
    web, partners = _shared(leaf, lib, secrets, b"web"), _shared(leaf, lib, secrets, b"partners")
    session = _session(web.ctx, ca)
    assert not _handshake(partners.ctx, ca, session).session_reused
    plain = Listener(name="web", listen="127.0.0.1:1", tls=ListenerTls(certificates=[{"cert": "c", "key": "k"}]))
    strict = plain.model_copy(update={"tls": plain.tls.model_copy(update={"min_version": "1.3"})})  # type: ignore[union-attr]
    assert listener_label(plain) != listener_label(strict)  # changed TLS settings: new keys


def test_the_listener_context_keys_serve_every_sni_certificate(
    leaf: trustme.LeafCert, ca: trustme.CA, lib: openssl.LibSsl
) -> None:
    """OpenSSL uses the context a connection started on for tickets, whatever SNI switches to."""
    secrets = [os.urandom(32)]
    worker_a, worker_b = _shared(leaf, lib, secrets), _shared(leaf, lib, secrets)
    other_cert = _server(leaf)

    def switch(sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        sslobj.context = other_cert

    for worker in (worker_a, worker_b):
        worker.ctx.sni_callback = switch
    session = _session(worker_a.ctx, ca)
    assert _handshake(worker_b.ctx, ca, session).session_reused


def test_no_keys_yet_means_no_ticket_and_no_error(leaf: trustme.LeafCert, ca: trustme.CA, lib: openssl.LibSsl) -> None:
    keys = TicketKeys(b"web", lib)
    ctx = _server(leaf)
    assert keys.install(ctx)
    client = _handshake(ctx, ca)
    assert client.session is not None and not client.session.has_ticket


def test_unchanged_secrets_keep_their_derived_keys(lib: openssl.LibSsl) -> None:
    first, second = os.urandom(32), os.urandom(32)
    keys = TicketKeys(b"web", lib)
    keys.update([first])
    derived = keys.keys[0]
    keys.update([second, first])
    assert keys.keys[1] is derived and keys.keys[0].name != derived.name
    assert len({k.name for k in keys.keys}) == 2


def test_a_context_that_does_not_read_back_is_refused(lib: openssl.LibSsl) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert lib.context_pointer(ctx) is not None
    assert lib.context_pointer(object()) is None


def test_unavailable_binding_is_said_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tickets, "load", lambda: openssl.Unavailable("Python 9.9: SSLContext layout not checked"))
    monkeypatch.setattr(tickets, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="portcullis"):
        assert tickets.binding() is None and tickets.binding() is None
    said = [r for r in caplog.records if "session tickets stay per worker" in r.getMessage()]
    assert len(said) == 1 and "9.9" in said[0].getMessage()


def test_interpreter_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openssl, "_PYTHONS", ((3, 0), (3, 1)))
    with pytest.raises(openssl.Unavailable, match="layout not checked"):
        openssl._check_interpreter()


def test_decode_secrets() -> None:
    assert decode_secrets({"web": ["00ff", 3, "zz"], 5: ["00"]}) == {"web": [b"\x00\xff"]}
    assert decode_secrets(None) == {}


# --------------------------------------------------------------------------- the master's rotation

def _config(tmp_path: Path, rotate: str | None = "10s", names: tuple[str, ...] = ("web",)) -> Config:
    tls: dict[str, object] = {"certificates": [{"cert": "c", "key": "k"}]}
    tls["session_tickets"] = {"rotate": rotate} if rotate else None
    listeners = [{"name": n, "listen": f"127.0.0.1:{8443 + i}", "tls": tls} for i, n in enumerate(names)]
    return Config.model_validate({"listeners": [*listeners, {"name": "plain", "listen": "127.0.0.1:8080"}]})


def test_rotation_schedule(tmp_path: Path) -> None:
    now = [100.0]
    rotation = TicketRotation(clock=lambda: now[0])
    config = _config(tmp_path)
    rotation.ensure(config)
    first = rotation.message()
    assert list(first) == ["web"] and len(first["web"]) == 1 and len(bytes.fromhex(first["web"][0])) == 32
    assert rotation.next_due(config) == 110.0
    now[0] = 109.0
    assert rotation.rotate_due(config) == []
    now[0] = 110.0
    assert rotation.rotate_due(config) == ["web"]
    second = rotation.message()["web"]
    assert len(second) == 2 and second[1] == first["web"][0]
    now[0] = 120.5
    assert rotation.rotate_due(config) == ["web"]
    third = rotation.message()["web"]
    assert third[1] == second[0] and first["web"][0] not in third
    assert rotation.describe("web")["rotations"] == 2  # type: ignore[index]
    assert rotation.next_due(config) == 130.5


def test_reload_keeps_secrets_and_drops_gone_listeners(tmp_path: Path) -> None:
    rotation = TicketRotation()
    rotation.ensure(_config(tmp_path))
    before = rotation.message()["web"]
    grown = _config(tmp_path, names=("web", "api"))
    rotation.ensure(grown)
    assert rotation.message()["web"] == before and "api" in rotation.message()
    rotation.prune(_config(tmp_path, names=("api",)))
    assert list(rotation.message()) == ["api"]
    off = _config(tmp_path, rotate=None)
    rotation.prune(off)
    assert rotation.message() == {} and rotation.next_due(off) is None
