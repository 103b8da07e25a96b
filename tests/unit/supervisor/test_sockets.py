"""A listener's group of sockets: bound together on one address, spread over by the kernel,
and refused when anything else listens there."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from portcullis.supervisor.sockets import SHARDING, BindError, bind_listener, resize_listener
from tests.integration.harness import free_port, listening_on

pytestmark = pytest.mark.skipif(not SHARDING, reason="listener shards need Linux's SO_REUSEPORT")


def _free_address() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def group() -> Iterator[list[socket.socket]]:
    made = bind_listener(_free_address(), 4)
    yield made
    for sock in made:
        sock.close()


def test_a_group_is_that_many_listening_sockets_on_one_port(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    assert len(group) == 4
    assert {sock.getsockname() for sock in group} == {("127.0.0.1", port)}
    assert listening_on(port) == 4


def test_the_kernel_spreads_new_connections_over_the_group(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(64)]
    try:
        accepted = [0] * len(group)
        for i, sock in enumerate(group):
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[i] += 1
        assert sum(accepted) == 64, accepted  # every connection was queued on one of them
        assert sum(1 for n in accepted if n) >= 2, accepted  # 64 source ports do not all hash alike
    finally:
        for client in clients:
            client.close()


def test_an_address_something_listens_on_is_refused() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        address = f"127.0.0.1:{plain.getsockname()[1]}"
        with pytest.raises(BindError, match=f"cannot listen on {address}: Address already in use"):
            bind_listener(address, 4)


def test_a_second_group_may_not_share_the_address_of_the_first(group: list[socket.socket]) -> None:
    """Its sockets would accept the group's sockets as partners; the plain bind first refuses."""
    address = f"127.0.0.1:{group[0].getsockname()[1]}"
    with pytest.raises(BindError, match="Address already in use"):
        bind_listener(address, 4)
    assert listening_on(group[0].getsockname()[1]) == 4


def test_a_reload_keeps_the_group_and_grows_or_shrinks_it(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    address = f"127.0.0.1:{port}"
    grown = resize_listener(group, address, 6)
    try:
        assert grown[:4] == group and len(grown) == 6
        assert listening_on(port) == 6
        assert resize_listener(grown, address, 2) == group[:2]
        assert resize_listener(group, address, 4) == group
    finally:
        for sock in grown[4:]:
            sock.close()


def test_one_shard_is_bound_alone_and_a_reload_cannot_grow_it() -> None:
    (alone,) = bind_listener(_free_address(), 1)
    try:
        assert not alone.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        address = f"127.0.0.1:{alone.getsockname()[1]}"
        with pytest.raises(BindError, match="bound with one, alone"):
            resize_listener([alone], address, 4)
        assert resize_listener([alone], address, 1) == [alone]
    finally:
        alone.close()
