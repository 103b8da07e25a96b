"""The admin listener: health and readiness, the JSON API, secret redaction and the bearer token."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import START_TIMEOUT, Upstream
from ops_helpers import ADMIN_TOKEN, OpsProxy, OpsProxyFactory, ops_config, ops_proxies

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def a_upstream(make_upstream: Callable[[str], Upstream]) -> Upstream:
    return make_upstream("admin")


@pytest.fixture(scope="module")
def factory(workdir: Path) -> Iterator[OpsProxyFactory]:
    with ops_proxies(workdir, "ops-admin") as f:
        yield f


class Startup:
    """What /readyz said while the proxy started, and whether the listener served at its first 200."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.first_request: int | None = None


@pytest.fixture(scope="module")
def startup() -> Startup:
    return Startup()


@pytest.fixture(scope="module")
def open_admin(factory: OpsProxyFactory, a_upstream: Upstream, startup: Startup) -> OpsProxy:
    """Two workers, no token; /readyz is watched from the moment the process starts."""
    proxy = factory(ops_config(a_upstream, workers=2), wait=False)
    end = time.monotonic() + START_TIMEOUT
    seen = startup.seen
    while time.monotonic() < end and proxy.alive():
        try:
            code = httpx.get(proxy.admin_url + "/readyz", timeout=1).status_code
        except httpx.TransportError:
            code = 0  # the admin listener is not up yet
        if not seen or seen[-1] != code:
            seen.append(code)
        if code == 200:
            # ready means every worker serves: a request right now is answered
            try:
                startup.first_request = httpx.get(f"{proxy.url}/echo/ready", timeout=5).status_code
            except httpx.TransportError:
                startup.first_request = 0
            break
        time.sleep(0.01)
    assert seen and seen[-1] == 200, f"never ready: {seen}\n{proxy.stderr()[-2000:]}"
    return proxy


@pytest.fixture(scope="module")
def token_admin(factory: OpsProxyFactory, a_upstream: Upstream) -> OpsProxy:
    return factory(ops_config(a_upstream, workers=1), token=ADMIN_TOKEN)


def test_health_ready_and_the_json_api(open_admin: OpsProxy, a_upstream: Upstream) -> None:
    r = open_admin.admin("GET", "/healthz")
    assert r.status_code == 200 and r.text == "ok\n"
    r = open_admin.admin("GET", "/readyz")
    assert r.status_code == 200 and r.text == "ready\n"

    status = open_admin.status()
    assert status["generation"] == 1 and status["last_reload_error"] is None
    assert status["config_file"] == str(open_admin.config_path)
    assert status["reloads"] == 0 and status["reload_failures"] == 0
    assert [w["index"] for w in status["workers"]] == [0, 1]
    assert all(isinstance(w["pid"], int) and w["generation"] == 1 for w in status["workers"])

    upstreams = open_admin.admin("GET", "/api/upstreams").json()
    assert [p["url"] for p in upstreams["main"]["peers"]] == [a_upstream.url]
    listeners = open_admin.admin("GET", "/api/listeners").json()
    assert listeners == [
        {"name": "web", "listen": f"127.0.0.1:{open_admin.port}", "tls": False, "sockets": 8, "certificates": []}
    ]
    config = open_admin.admin("GET", "/api/config").json()
    assert config["workers"] == 2 and config["routes"][0]["name"] == "backend"
    assert config["admin"]["token"] is None

    assert open_admin.admin("GET", "/api/reload").status_code == 405
    assert open_admin.admin("POST", "/api/status").status_code == 405
    assert open_admin.admin("GET", "/api/nothing").status_code == 404
    # the admin API is not on the public listener
    assert open_admin.admin("GET", "/api/status").status_code == 200
    public = httpx.get(f"{open_admin.url}/api/status", timeout=5)
    assert public.status_code != 200 or "generation" not in public.text


def test_token_protects_everything_but_healthz(token_admin: OpsProxy) -> None:
    assert token_admin.admin("GET", "/healthz", token="").status_code == 200
    for method, path in [("GET", "/api/status"), ("GET", "/api/config"), ("GET", "/metrics"),
                         ("GET", "/readyz"), ("GET", "/api/upstreams"), ("POST", "/api/reload")]:  # fmt: skip
        r = token_admin.admin(method, path, token="")
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
        assert token_admin.admin(method, path, token="wrong-token").status_code == 401, path
    assert token_admin.admin("GET", "/api/status", token=ADMIN_TOKEN).status_code == 200
    assert token_admin.admin("GET", "/readyz", token=ADMIN_TOKEN).status_code == 200
    assert token_admin.status()["generation"] == 1  # nothing was reloaded by the refused POST


def test_config_endpoint_redacts_the_token(token_admin: OpsProxy) -> None:
    r = token_admin.admin("GET", "/api/config")
    assert r.status_code == 200
    assert ADMIN_TOKEN not in r.text
    doc = r.json()
    assert doc["admin"]["token"] == "***"
    assert doc["admin"]["listen"] == f"127.0.0.1:{token_admin.admin_port}"
    assert doc["listeners"][0]["listen"] == f"127.0.0.1:{token_admin.port}"


def test_readyz_turns_200_only_once_the_workers_serve(open_admin: OpsProxy, startup: Startup) -> None:
    seen = startup.seen
    print(f"/readyz sequence while starting: {seen}")
    assert set(seen) <= {0, 503, 200} and 503 in seen, f"expected 503 while the workers start: {seen}"
    assert startup.first_request == 200, "/readyz said 200 before the listener served"
    status = open_admin.status()
    assert len(status["workers"]) == 2 and all(w["generation"] == 1 for w in status["workers"]), status
