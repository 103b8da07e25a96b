"""Host values: the syntax check and the host name, both memoized across connections."""

from __future__ import annotations

import pytest

from portcullis.http import hosts


@pytest.mark.parametrize(
    ("authority", "name"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"[::1]:8443", "[::1]"),
        (b"[2001:DB8::1]", "[2001:db8::1]"),
        (b"127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_host_name_is_lower_case_without_the_port(authority: bytes, name: str) -> None:
    assert hosts.host_name(authority) == name
    assert hosts.host_name(authority) == name  # the second time from the memo
    assert hosts.checked_host_name(authority) == name
    assert hosts.checked_host_name(authority) == name


@pytest.mark.parametrize("value", [b"example.com", b"example.com:8080", b"[::1]:80", b"a-b_c.d~e", b""])
def test_well_formed_hosts_pass(value: bytes) -> None:
    assert hosts.checked_host_name(value) is not None
    assert hosts.checked_host_name(value) is not None


@pytest.mark.parametrize("value", [b"exa mple.com", b"example.com/x", b"a@b", b"[::1", b"host:80x", b"h\x00"])
def test_malformed_hosts_fail_every_time(value: bytes) -> None:
    hosts.host_name(value)  # a name worked out without the check does not make the value pass
    assert hosts.checked_host_name(value) is None
    assert hosts.checked_host_name(value) is None  # a refusal is never memoized as a pass


def test_memos_stay_bounded() -> None:
    for i in range(3000):
        authority = b"host%d.example:80" % i
        assert hosts.checked_host_name(authority) == f"host{i}.example"
        assert hosts.host_name(authority) == f"host{i}.example"
    assert len(hosts.checked_names) <= hosts._MEMO_MAX
    assert len(hosts._names) <= hosts._MEMO_MAX
