"""Fixtures for the integration suite: real upstream servers, a real `portcullis run` process, raw sockets.

Every process started here is killed at teardown, and every wait is bounded in time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Proxy, Upstream, free_port, main_config

# =========================================================================== fixtures

@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("portcullis-it")


@pytest.fixture(scope="session")
def make_upstream(workdir: Path) -> Iterator[Callable[[str], Upstream]]:
    started: list[Upstream] = []
    counter = iter(range(1000))

    def make(name: str = "up") -> Upstream:
        up = Upstream(f"{name}{next(counter)}", workdir)
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture(scope="session")
def make_proxy(workdir: Path) -> Iterator[Callable[[dict[str, Any]], Proxy]]:
    started: list[Proxy] = []
    counter = iter(range(1000))

    def make(config: dict[str, Any]) -> Proxy:
        proxy = Proxy(config, workdir, f"proxy{next(counter)}")
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def upstream(make_upstream: Callable[[str], Upstream]) -> Upstream:
    return make_upstream("A")


@pytest.fixture(scope="session")
def dead_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def proxy(make_proxy: Callable[[dict[str, Any]], Proxy], upstream: Upstream, dead_port: int) -> Proxy:
    return make_proxy(main_config(upstream, dead_port))


@pytest.fixture
def client(proxy: Proxy) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=proxy.url, timeout=10.0) as c:
        yield c


@pytest.fixture(autouse=True)
def _proxy_stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test does, the proxy processes it used must survive it."""
    yield
    for value in getattr(request.node, "funcargs", {}).values():
        if isinstance(value, Proxy):
            assert value.alive(), f"portcullis died:\n{value.log_text()[-3000:]}"
