"""Peer discovery: host names become one peer per address; a peer file is read and watched."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from portcullis.balancing.discovery import PeerDiscovery, Target, expand, read_peer_file
from portcullis.config.schema import Discovery
from portcullis.config.schema import Peer as PeerSpec


def test_an_ip_peer_stays_as_it_is() -> None:
    spec = PeerSpec(url="http://127.0.0.1:9001", weight=3)
    assert asyncio.run(expand(spec, resolve=True)) == [Target("http://127.0.0.1:9001", spec.url, 3, False, 0)]


def test_a_host_name_becomes_one_peer_per_address() -> None:
    spec = PeerSpec(url="http://localhost:9001", weight=2, backup=True)
    targets = asyncio.run(expand(spec, resolve=True))
    urls = {t.url for t in targets}
    assert "http://127.0.0.1:9001" in urls
    assert urls <= {"http://127.0.0.1:9001", "http://[::1]:9001"}
    assert all(t.origin == spec.url and t.weight == 2 and t.backup for t in targets)


def test_without_resolving_a_host_name_is_one_peer() -> None:
    spec = PeerSpec(url="http://localhost:9001")
    assert [t.url for t in asyncio.run(expand(spec, resolve=False))] == ["http://localhost:9001"]


def test_peer_file_is_read_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "peers.yaml"
    path.write_text("- {url: http://127.0.0.1:9001, weight: 2}\n- {url: http://127.0.0.1:9002, backup: true}\n")
    specs = read_peer_file(str(path))
    assert [(s.url, s.weight, s.backup) for s in specs] == [
        ("http://127.0.0.1:9001", 2, False), ("http://127.0.0.1:9002", 1, True),
    ]  # fmt: skip
    path.write_text("- {url: ftp://nope}\n")
    with pytest.raises(ValueError, match=r"peers\.yaml"):
        read_peer_file(str(path))


def test_a_changed_file_is_applied_and_a_broken_one_keeps_the_peers(tmp_path: Path) -> None:
    path = tmp_path / "peers.yaml"
    path.write_text("- {url: http://127.0.0.1:9001}\n")
    applied: list[list[str]] = []

    def apply(targets: Sequence[Target]) -> None:
        applied.append([t.url for t in targets])

    discovery = PeerDiscovery("app", [], Discovery(file=str(path)), apply)

    async def scenario() -> None:
        assert await discovery.refresh()
        assert not await discovery.refresh()  # nothing changed: nothing applied
        path.write_text("- {url: http://127.0.0.1:9002}\n- {url: http://127.0.0.1:9003}\n")
        os.utime(path, (1, 1))  # a distinct mtime even on coarse file systems
        assert await discovery.refresh()
        path.write_text("not: [a, peer, list\n")
        os.utime(path, (2, 2))
        assert not await discovery.refresh()

    asyncio.run(scenario())
    assert applied == [["http://127.0.0.1:9001"], ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]]
