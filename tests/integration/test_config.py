"""A bad config: `portcullis run` exits 1 before binding anything and prints FILE:LINE: KEY: REASON."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import free_port

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>\(top level\)|[^\s:]+): (?P<reason>.+)$")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port we listen on ourselves: a proxy that tried to bind it would fail with 'cannot listen'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def _portcullis(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portcullis", *args], cwd=cwd, capture_output=True, text=True, timeout=30
    )


def _issues(output: str) -> list[tuple[str, int, str, str]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), f"every line must be FILE:LINE: KEY: REASON, got:\n{output}"
    return [(m["file"], int(m["line"]), m["key"], m["reason"]) for m in parsed if m]


def _bad(port: int) -> str:
    return textwrap.dedent(
        f"""\
        workers: 1
        listeners:
          - name: web
            listen: 127.0.0.1:{port}
        server:
          timeouts:
            client_header: 10 parsecs
        upstreams:
          app:
            peers:
              - url: http://127.0.0.1:9
        routes:
          - name: r
            match: {{path_prefix: /}}
            upstream: app
            bogus_key: 1
        """
    )


def test_run_with_a_bad_config_exits_1_before_binding(tmp_path: Path, held_port: int) -> None:
    (tmp_path / "bad.yaml").write_text(_bad(held_port))
    result = _portcullis("run", "-c", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot listen" not in result.stderr  # it never got as far as binding
    issues = _issues(result.stderr)
    assert ("bad.yaml", 7, "server.timeouts.client_header") in [i[:3] for i in issues]
    assert ("bad.yaml", 16, "routes[0].bogus_key") in [i[:3] for i in issues]
    assert all(reason for *_, reason in issues)


def test_the_held_port_really_would_have_failed(tmp_path: Path, held_port: int) -> None:
    """Keeps the test above honest: the same file, made valid, does try to bind and fails."""
    good = _bad(held_port).replace("10 parsecs", "10s").replace("    bogus_key: 1\n", "")
    (tmp_path / "good.yaml").write_text(good)
    result = _portcullis("run", "-c", "good.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot listen" in result.stdout + result.stderr


def test_run_with_a_bad_reference_exits_1(tmp_path: Path, held_port: int) -> None:
    text = _bad(held_port).replace("10 parsecs", "10s").replace("    bogus_key: 1\n", "")
    text = text.replace("upstream: app", "upstream: nowhere")
    (tmp_path / "ref.yaml").write_text(text)
    result = _portcullis("run", "-c", "ref.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot listen" not in result.stderr
    issues = _issues(result.stderr)
    assert [(f, line, key) for f, line, key, _ in issues] == [("ref.yaml", 15, "routes[0].upstream")]
    assert "nowhere" in issues[0][3]


def test_run_with_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = _portcullis("run", "-c", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 1
    issues = _issues(result.stderr)
    assert issues[0][:2] == ("missing.yaml", 1)


def test_run_with_invalid_yaml_exits_1(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("listeners:\n  - name: web\n    listen: [unclosed\n")
    result = _portcullis("run", "-c", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 1
    issues = _issues(result.stderr)
    assert issues and issues[0][0] == "broken.yaml"


def test_check_reports_the_same_and_accepts_a_good_file(tmp_path: Path, held_port: int) -> None:
    (tmp_path / "bad.yaml").write_text(_bad(held_port))
    bad = _portcullis("check", "-c", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 1
    run = _portcullis("run", "-c", "bad.yaml", cwd=tmp_path)
    assert _issues(bad.stderr) == _issues(run.stderr)
    good = _bad(held_port).replace("10 parsecs", "10s").replace("    bogus_key: 1\n", "")
    (tmp_path / "good.yaml").write_text(good)
    ok = _portcullis("check", "-c", "good.yaml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("ciphers", "reason"),
    [
        (None, "Unable to load PEM file"),  # a certificate file that is readable but no certificate
        ("NOT-A-CIPHER", "No cipher can be selected."),  # an OpenSSL cipher list that selects nothing
    ],
)
def test_a_worker_that_cannot_start_the_config_is_reported_without_a_traceback(
    tmp_path: Path, ciphers: str | None, reason: str
) -> None:
    """What only a worker finds (`check` does not load certificates into OpenSSL) stops `run`
    with the reason on one line and exit 1, not a traceback, and nothing is left holding the
    address."""
    port = free_port()
    if ciphers is None:
        (tmp_path / "cert.pem").write_text("not a certificate\n")
        (tmp_path / "key.pem").write_text("not a key\n")
    else:
        issued = trustme.CA().issue_cert("localhost")
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = "{certificates: [{cert: cert.pem, key: key.pem}]" + (f", ciphers: {ciphers}}}" if ciphers else "}")
    (tmp_path / "tls.yaml").write_text(textwrap.dedent(f"""\
        listeners:
          - name: web
            listen: '127.0.0.1:{port}'
            tls: {tls}
        routes:
          - {{name: r, match: {{path_prefix: /}}, filters: [{{type: respond, status: 200}}]}}
        """))  # fmt: skip
    assert _portcullis("check", "-c", "tls.yaml", cwd=tmp_path).returncode == 0
    result = _portcullis("run", "-c", "tls.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"portcullis: worker 0 refused the configuration: {reason}" in result.stderr
    with socket.socket() as s:  # the master let go of the address
        s.bind(("127.0.0.1", port))
