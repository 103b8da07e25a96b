"""Fast checks of the harness pieces (no load is generated): ``python3 -m pytest bench``."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

# bench/ has no __init__.py, so pytest puts it on sys.path and the harness modules import
# the same way run.py imports them.
import httpclient
import pytest
import report
import templating
import wrkload
import yaml
from idle import IdleResult

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:39957/small
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   356.20us   40.50us   1.51ms   97.45%
    Req/Sec    60.32k     6.84k   80.20k    90.91%
  Latency Distribution
     50%   56.00us
     75%   63.00us
     90%   73.00us
     99%    1.25ms
  131992 requests in 2.10s, 19.39MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  62853.33
Transfer/sec:      9.23MB
"""


def test_parse_wrk_output() -> None:
    result = wrkload.parse_output(WRK_OUTPUT)
    assert result.requests == 131992
    assert result.seconds == pytest.approx(2.1)
    assert result.rps == pytest.approx(62853.33)
    assert result.latency_ms == pytest.approx({"50": 0.056, "75": 0.063, "90": 0.073, "99": 1.25})
    assert result.p99_ms == pytest.approx(1.25)
    assert result.non_2xx_3xx == 7
    assert result.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 2}
    assert result.errors == 12


def test_parse_wrk_output_without_errors() -> None:
    lines = WRK_OUTPUT.splitlines()
    text = "\n".join(line for line in lines if "errors" not in line and "Non-2xx" not in line)
    result = wrkload.parse_output(text)
    assert result.errors == 0


@pytest.mark.parametrize(("text", "ms"), [("56.00us", 0.056), ("1.25ms", 1.25), ("2.00s", 2000.0),
                                          ("1.00m", 60000.0)])
def test_wrk_time_units(text: str, ms: float) -> None:
    assert wrkload.parse_duration_ms(text) == pytest.approx(ms)


def test_parse_wrk_garbage() -> None:
    with pytest.raises(wrkload.WrkError):
        wrkload.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_argv_pins_and_adds_headers() -> None:
    argv = wrkload.wrk_argv("wrk", "http://h/x", duration_s=5, connections=32, headers=["Connection: close"],
                            cpu=1)
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[argv.index("-H"):argv.index("-H") + 2] == ["-H", "Connection: close"]
    assert "-d5s" in argv and "-c32" in argv and "--latency" in argv and argv[-1] == "http://h/x"


def test_bodies() -> None:
    body = templating.small_body()
    assert len(body.encode()) == templating.SMALL_BODY_SIZE
    assert not set(body) & set('"\\$;{}')
    assert len(templating.large_body()) == 64 * 1024


def test_render_rejects_unknown_placeholder() -> None:
    assert templating.render("a {{x}} $host {b}", {"x": "1"}) == "a 1 $host {b}"
    with pytest.raises(templating.TemplateError):
        templating.render("{{missing}}", {})


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("access_log", ["", "access_log: {path: /tmp/access.log, format: json}"])
def test_portcullis_template_matches_schema(workers: str, access_log: str) -> None:
    values = {"port": "18080", "backend_port": "18081", "workers": workers, "access_log": access_log}
    data = yaml.safe_load(templating.render_file("portcullis.yaml", values))
    schema = pytest.importorskip("portcullis.config.schema")
    config = schema.Config.model_validate(data)
    assert config.workers == int(workers)
    assert (config.access_log is not None) == bool(access_log)
    assert config.listeners[0].listen == "127.0.0.1:18080"
    assert config.upstreams["backend"].peers[0].url == "http://127.0.0.1:18081"
    assert config.routes[0].match.path_prefix == "/"


@pytest.mark.parametrize("template", ["backend.conf", "proxy.conf"])
def test_nginx_templates_pass_nginx_t(template: str, tmp_path: Path) -> None:
    nginx = templating.find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed")
    info = templating.nginx_build_info(nginx)
    (tmp_path / "www").mkdir()
    values = {**templating.nginx_values(info, tmp_path), "name": "t", "port": "18080",
              "backend_port": "18081", "docroot": str(tmp_path / "www"),
              "small_body": templating.small_body()}
    conf = tmp_path / "t.conf"
    conf.write_text(templating.render_file(template, values))
    argv = templating.nginx_argv(nginx, tmp_path, conf)
    done = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def _serve_once(payload: bytes) -> tuple[socket.socket, threading.Thread]:
    server, client = socket.socketpair()

    def send() -> None:
        server.recv(65536)
        server.sendall(payload)

    thread = threading.Thread(target=send)
    thread.start()
    return client, thread


def test_read_response_content_length() -> None:
    client, thread = _serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    response = httpclient.read_response(client)
    thread.join()
    assert (response.status, response.body, response.headers["x-a"]) == (200, b"hello", "b")


def test_read_response_chunked() -> None:
    payload = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n")
    client, thread = _serve_once(payload)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    response = httpclient.read_response(client)
    thread.join()
    assert response.body == b"abcde"


def _results() -> report.Results:
    results = report.Results("nginx", "portcullis", settings={})
    for rnd, (ref_rps, cand_rps) in enumerate([(100.0, 30.0), (120.0, 50.0), (110.0, 60.0)], start=1):
        for scenario in report.SCENARIOS:
            for label, rps in (("nginx", ref_rps), ("portcullis", cand_rps)):
                text = WRK_OUTPUT.replace("62853.33", str(rps)).replace("Non-2xx or 3xx responses: 7", "")
                text = text.replace("read 3, write 0, timeout 2", "read 0, write 0, timeout 0")
                results.add(scenario, label, report.Run(rnd, wrkload.parse_output(text), 50.0))
    results.idle["nginx"] = IdleResult(2000, 2000, 2000, 10_000, 11_000, 0.3)
    results.idle["portcullis"] = IdleResult(2000, 2000, 2000, 30_000, 50_000, 1.0)
    return results


def test_report_medians_ratio_and_goals() -> None:
    results = _results()
    small = report.SCENARIOS[0]
    assert results.summary(small, "nginx").rps == 110.0  # type: ignore[union-attr]
    assert results.ratio(small) == pytest.approx(50.0 / 110.0)
    goals = {g["scenario"]: g for g in results.goals()}
    assert goals["small_keepalive"]["met"] is True  # 0.45 >= 0.4
    assert goals["small_new_conn"]["met"] is False  # 0.45 < 0.6
    assert goals["idle_rss"]["value"] == pytest.approx(20_000 * 1024 / 2000)
    assert goals["idle_rss"]["met"] is False
    text = report.format_text(results)
    assert "NOT MET" in text and "0.45" in text


def test_report_json_is_serialisable() -> None:
    data = json.loads(json.dumps(_results().to_json()))
    assert data["summary"]["small_keepalive"]["ratio"] == pytest.approx(50.0 / 110.0)
    assert len(data["runs"]["large_keepalive"]["portcullis"]) == 3
