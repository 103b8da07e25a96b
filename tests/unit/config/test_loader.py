"""The config loader: a good file loads; every kind of problem is reported as FILE:LINE: KEY: REASON."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from portcullis.config import Config, ConfigError, ConfigIssue, load_config, load_config_text
from portcullis.config.schema import RedirectFilter, RespondFilter, RewriteFilter

GOOD = """\
workers: 2
admin: {listen: 127.0.0.1:9901}
listeners:
  - name: web
    listen: 127.0.0.1:8080
  - name: secure
    listen: 127.0.0.1:8443
    tls:
      certificates: [{cert: certs/site.pem, key: certs/site.key}]
      client_auth: {ca: certs/clients.pem, required: false}
server:
  trusted_proxies: [10.0.0.0/8]
  timeouts: {client_header: 250ms}
  limits: {max_body: 64KiB}
upstreams:
  app:
    peers:
      - {url: http://127.0.0.1:9001, weight: 3}
      - {url: http://127.0.0.1:9002}
    timeouts: {connect: 2s, response: 30s}
routes:
  - name: api
    listeners: [web, secure]
    match: {host: api.example.com, path_prefix: /v1/, methods: [get, POST]}
    filters:
      - {type: rewrite, strip_prefix: /v1}
      - type: headers
        response: {set: {X-Frame-Options: DENY}}
    upstream: app
  - name: old
    match: {path: /old}
    filters: [{type: redirect, to: /new, status: 301}]
  - name: site
    match: {path_prefix: /}
    upstream: app
"""


def write_certs(folder: Path) -> None:
    (folder / "certs").mkdir()
    for name in ("site.pem", "site.key", "clients.pem"):
        (folder / "certs" / name).write_text("-----BEGIN-----\n")


def write(tmp_path: Path, text: str, name: str = "portcullis.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    """(the file name, every issue as printed) for a config that must fail."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(path), [str(issue) for issue in info.value.issues]


def one_problem(tmp_path: Path, text: str, prefix: str, *words: str) -> str:
    """Assert exactly one issue, starting with FILE:``prefix``, whose text holds ``words``."""
    file, issues = problems(tmp_path, text)
    assert len(issues) == 1, issues
    assert issues[0].startswith(f"{file}:{prefix} "), issues
    for word in words:
        assert word in issues[0], issues
    return issues[0]


# --------------------------------------------------------------------------- good configs

def test_good_config_loads(tmp_path: Path) -> None:
    write_certs(tmp_path)
    config = load_config(write(tmp_path, GOOD))
    assert isinstance(config, Config)
    assert config.workers == 2
    assert [listener.name for listener in config.listeners] == ["web", "secure"]
    assert config.server.timeouts.client_header == 0.25
    assert config.server.limits.max_body == 64 * 1024
    assert config.upstreams["app"].timeouts.connect == 2.0
    assert config.upstreams["app"].peers[0].weight == 3
    assert config.routes[0].match.methods == ["GET", "POST"]
    assert isinstance(config.routes[0].filters[0], RewriteFilter)
    assert isinstance(config.routes[1].filters[0], RedirectFilter)


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = load_config_text("listeners: [{name: web, listen: ':8080'}]\n", "x.yaml", str(tmp_path))
    assert config.listeners[0].listen == "0.0.0.0:8080"
    assert config.workers == 1 and config.routes == [] and config.admin is None


def test_route_answering_without_upstream_is_fine(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: hello
        filters: [{type: respond, body: hi}]
    """
    config = load_config(write(tmp_path, text))
    assert isinstance(config.routes[0].filters[0], RespondFilter)


def test_relative_tls_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    write_certs(tmp_path)
    text = textwrap.dedent(GOOD)
    config = load_config_text(text, "inline.yaml", str(tmp_path))
    assert config.listeners[1].tls is not None
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "inline.yaml", str(tmp_path / "elsewhere"))
    assert all(issue.file == "inline.yaml" for issue in info.value.issues)
    assert [issue.line for issue in info.value.issues] == [9, 9, 10]


def test_merge_keys_are_supported(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    upstreams:
      a: &base
        peers: [{url: http://127.0.0.1:9001}]
        timeouts: {connect: 1s}
      b:
        <<: *base
        timeouts: {connect: 3s}
    """
    config = load_config(write(tmp_path, text))
    assert config.upstreams["b"].timeouts.connect == 3.0
    assert config.upstreams["b"].peers[0].url == "http://127.0.0.1:9001"


def test_issue_and_error_formatting() -> None:
    first = ConfigIssue("a.yaml", 3, "routes[0].name", "required key is missing")
    second = ConfigIssue("a.yaml", 7, "workers", "must be at least 1 (or 'auto')")
    assert str(first) == "a.yaml:3: routes[0].name: required key is missing"
    error = ConfigError([first, second])
    assert error.issues == [first, second]
    assert str(error) == f"{first}\n{second}"


# --------------------------------------------------------------------------- schema errors

def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    text = """\
    listeners:
      - name: web
        listn: 127.0.0.1:8080
    """
    file, issues = problems(tmp_path, text)
    assert f"{file}:3: listeners[0].listn: unknown key; did you mean 'listen'?" in issues
    assert f"{file}:2: listeners[0].listen: required key is missing" in issues


def test_unknown_key_in_a_filter_suggests_from_that_filter(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: r
        filters:
          - {type: redirect, to: /x, stauts: 301}
    """
    one_problem(tmp_path, text, "5: routes[0].filters[0].stauts:", "unknown key", "did you mean 'status'?")


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    text = "listeners: [{name: web, listen: 127.0.0.1:8080}]\nzebra: 1\n"
    issue = one_problem(tmp_path, text, "2: zebra:", "unknown key")
    assert "did you mean" not in issue


def test_wrong_type(tmp_path: Path) -> None:
    text = """\
    workers: lots
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    """
    one_problem(tmp_path, text, "1: workers:", "expected an integer or 'auto'", "got 'lots'")


def test_wrong_type_in_a_list_item(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    upstreams:
      app:
        peers:
          - url: http://127.0.0.1:9001
          - url: http://127.0.0.1:9002
            weight: heavy
    """
    one_problem(tmp_path, text, "7: upstreams.app.peers[1].weight:", "expected an integer", "'heavy'")


def test_bad_duration(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    server:
      timeouts:
        client_header: 3 fortnights
    """
    one_problem(tmp_path, text, "4: server.timeouts.client_header:", "not a duration", "250ms")


def test_bad_size(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: upload
        upstream: app
        limits: {max_body: 12 parsecs}
    upstreams:
      app: {peers: [{url: http://127.0.0.1:9001}]}
    """
    one_problem(tmp_path, text, "5: routes[0].limits.max_body:", "not a size", "64KiB")


def test_bad_address(tmp_path: Path) -> None:
    text = """\
    listeners:
      - name: web
        listen: localhost
    """
    one_problem(tmp_path, text, "3: listeners[0].listen:", "not an address", "host:port")


def test_bad_port(tmp_path: Path) -> None:
    text = "listeners:\n  - {name: web, listen: '127.0.0.1:99999'}\n"
    one_problem(tmp_path, text, "2: listeners[0].listen:", "out of range")


def test_shards_out_of_range(tmp_path: Path) -> None:
    text = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    shards: 0\n"
    one_problem(tmp_path, text, "4: listeners[0].shards:", "at least 1")
    text = text.replace("shards: 0", "shards: 65")
    one_problem(tmp_path, text, "4: listeners[0].shards:", "at most 64")


def test_bad_regex(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: r
        upstream: app
        match:
          path_regex: "^/(api"
    upstreams:
      app: {peers: [{url: http://127.0.0.1:9001}]}
    """
    issue = one_problem(tmp_path, text, "6: routes[0].match.path_regex:", "invalid regular expression")
    assert "Value error" not in issue


def test_bad_waf_rules(tmp_path: Path) -> None:
    """The WAF's own language is checked with the file: a rule that would not compile is
    refused at its line, not when a worker starts."""
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: r
        upstream: app
        match: {path_prefix: /}
        filters:
          - type: waf
            rules:
              - 'SecRule ARGS "@rx a" "id:1,phase:2,deny"'
              - |
                SecRule ARGS "@rx b" "id:2,phase:2,deny"
                SecRule ARGS "@rx (" "id:3,phase:2,deny"
            rule_files: [missing.conf]
    upstreams:
      app: {peers: [{url: http://127.0.0.1:9001}]}
    """
    file, issues = problems(tmp_path, text)
    assert issues == [
        f"{file}:10: routes[0].filters[0].rules[1]: line 2: invalid regular expression '(': missing ) at position 1",
        f"{file}:13: routes[0].filters[0].rule_files[0]: cannot read 'missing.conf': No such file or directory",
    ]
    (tmp_path / "bad.conf").write_text('SecRule ARGS "@nosuchop x" "id:4,phase:2,deny"\n')
    fixed = text.replace('"@rx ("', '"@rx c"').replace("missing.conf", str(tmp_path / "bad.conf"))
    file, issues = problems(tmp_path, fixed)
    bad = tmp_path / "bad.conf"
    assert issues == [f"{file}:13: routes[0].filters[0].rule_files[0]: {bad}:1: unknown operator @nosuchop"]


CRS = "/usr/share/modsecurity-crs"
_CRS_CONFIG = """\
listeners: [{name: web, listen: 127.0.0.1:8080}]
routes:
  - name: r
    match: {path_prefix: /}
    filters:
      - {type: waf, crs: %s, rules: [%s]}
      - {type: respond, status: 200}
"""


@pytest.mark.skipif(not os.path.isdir(CRS), reason="needs Debian's modsecurity-crs")
def test_a_broken_crs_file_is_refused_at_its_place(tmp_path: Path) -> None:
    """The CRS compiles with the config, as the workers will compile it: a file that does not is
    refused by `check` (and `run`) with the CRS file's line, rather than failing the workers."""
    import shutil

    crs = tmp_path / "crs"
    shutil.copytree(CRS, crs, ignore=shutil.ignore_patterns("util"))
    xss = crs / "rules" / "REQUEST-941-APPLICATION-ATTACK-XSS.conf"
    lines = xss.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"id:941100,' in line)
    lines[at] = lines[at].replace('"id:941100,', '"id:941100,dney,')
    xss.write_text("".join(lines))
    rule_starts = max(i for i in range(at) if lines[i].startswith("SecRule"))  # the place of a rule
    one_problem(
        tmp_path, _CRS_CONFIG % (crs, ""), "6: routes[0].filters[0]:",
        f"{xss}:{rule_starts + 1}: unknown action 'dney' (did you mean 'deny'?)",
    )  # fmt: skip


@pytest.mark.skipif(not os.path.isdir(CRS), reason="needs Debian's modsecurity-crs")
def test_a_user_rule_may_not_reuse_a_crs_rule_id(tmp_path: Path) -> None:
    rule = """'SecRule ARGS "@rx x" "id:942100,phase:2,deny"'"""
    one_problem(tmp_path, _CRS_CONFIG % (CRS, rule), "6: routes[0].filters[0]:", "duplicate rule id 942100")
    config = load_config(write(tmp_path, _CRS_CONFIG % (CRS, rule.replace("942100", "1942100"))))
    assert config.routes[0].filters


def test_missing_required_field(tmp_path: Path) -> None:
    text = """\
    listeners:
      - name: web
        listen: 127.0.0.1:8080
      - listen: 127.0.0.1:8081
    """
    one_problem(tmp_path, text, "4: listeners[1].name:", "required key is missing")


def test_missing_required_section(tmp_path: Path) -> None:
    text = """\
    # no listeners at all
    workers: 1
    """
    one_problem(tmp_path, text, "2: listeners:", "required key is missing")


def test_missing_nested_field_points_at_its_mapping(tmp_path: Path) -> None:
    text = """\
    listeners:
      - name: web
        listen: 127.0.0.1:8443
        tls:
          min_version: "1.3"
    """
    one_problem(tmp_path, text, "4: listeners[0].tls.certificates:", "required key is missing")


def test_unknown_filter_type(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: r
        filters:
          - type: respond
          - type: redirct
            to: /x
    """
    one_problem(tmp_path, text, "6: routes[0].filters[1].type:", "unknown type 'redirct'",
                "did you mean 'redirect'?")


def test_filter_without_type(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: r
        filters:
          - {to: /x}
    """
    one_problem(tmp_path, text, "5: routes[0].filters[0].type:", "required key is missing", "redirect")


def test_bad_literal_suggests(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    upstreams:
      app:
        peers: [{url: http://127.0.0.1:9001}]
        balance: round_robbin
    """
    one_problem(tmp_path, text, "5: upstreams.app.balance:", "expected 'round_robin'",
                "did you mean 'round_robin'?")


def test_bad_header_name_key(tmp_path: Path) -> None:
    text = """\
    listeners: [{name: web, listen: 127.0.0.1:8080}]
    routes:
      - name: r
        filters:
          - type: respond
            headers:
              Bad Header: x
    """
    one_problem(tmp_path, text, "7: routes[0].filters[0].headers.Bad Header:", "not a valid header name")


# --------------------------------------------------------------------------- cross-reference checks

BASE = """\
listeners:
  - name: web
    listen: 127.0.0.1:8080
upstreams:
  app: {peers: [{url: http://127.0.0.1:9001}]}
"""


def test_route_naming_a_missing_upstream(tmp_path: Path) -> None:
    text = BASE + "routes:\n  - name: r\n    upstream: ap\n"
    one_problem(tmp_path, text, "8: routes[0].upstream:", "unknown upstream 'ap'", "did you mean 'app'?")


def test_route_naming_a_missing_listener(tmp_path: Path) -> None:
    text = BASE + "routes:\n  - name: r\n    upstream: app\n    listeners:\n      - web\n      - wbe\n"
    one_problem(tmp_path, text, "11: routes[0].listeners[1]:", "unknown listener 'wbe'",
                "did you mean 'web'?")


def test_duplicate_listen_address(tmp_path: Path) -> None:
    text = BASE + "  # more listeners below\n" + "admin: {listen: '127.0.0.1:9901'}\n"
    text = text.replace(
        "    listen: 127.0.0.1:8080\n",
        "    listen: 127.0.0.1:8080\n  - name: other\n    listen: '127.0.0.1:8080'\n",
    )
    one_problem(tmp_path, text, "5: listeners[1].listen:", "duplicate listen address 127.0.0.1:8080",
                "line 3")


def test_wildcard_listen_address_overlaps(tmp_path: Path) -> None:
    text = "listeners:\n  - {name: a, listen: '[::1]:80'}\n  - {name: b, listen: '[::]:80'}\n"
    one_problem(tmp_path, text, "3: listeners[1].listen:", "overlaps", "[::1]:80")


def test_admin_listen_address_clashes_with_a_listener(tmp_path: Path) -> None:
    text = BASE + "admin:\n  listen: 127.0.0.1:8080\n"
    one_problem(tmp_path, text, "7: admin.listen:", "duplicate listen address")


def test_duplicate_listener_name(tmp_path: Path) -> None:
    text = BASE.replace(
        "    listen: 127.0.0.1:8080\n",
        "    listen: 127.0.0.1:8080\n  - name: web\n    listen: 127.0.0.1:8081\n",
    )
    one_problem(tmp_path, text, "4: listeners[1].name:", "duplicate listener name 'web'", "line 2")


def test_duplicate_route_name(tmp_path: Path) -> None:
    text = BASE + "routes:\n  - {name: r, upstream: app}\n  - {name: r, upstream: app}\n"
    one_problem(tmp_path, text, "8: routes[1].name:", "duplicate route name 'r'", "line 7")


def test_missing_certificate_file(tmp_path: Path) -> None:
    write_certs(tmp_path)
    text = GOOD.replace("certs/site.key", "certs/missing.key")
    missing = tmp_path / "certs" / "missing.key"
    one_problem(tmp_path, text, "9: listeners[1].tls.certificates[0].key:", f"file not found: {missing}")


_LOGS = """\
access_log: {path: %s}
listeners: [{name: web, listen: 127.0.0.1:8080}]
routes:
  - name: r
    match: {path_prefix: /}
    filters:
      - {type: waf, rules: ['SecRule ARGS "@rx x" "id:1,phase:2,deny"'], audit_log: %s}
      - {type: respond, status: 200}
"""


def test_log_files_that_cannot_be_written(tmp_path: Path) -> None:
    """The access log and a WAF audit log are opened by the workers: a path they could not
    open is refused with the file, not when they start."""
    file, issues = problems(tmp_path, _LOGS % ("nowhere/access.log", tmp_path))
    assert issues == [
        f"{file}:1: access_log.path: cannot create {tmp_path / 'nowhere' / 'access.log'}: "
        f"the directory {tmp_path / 'nowhere'} does not exist",
        f"{file}:7: routes[0].filters[0].audit_log: {tmp_path} is a directory",
    ]
    config = load_config(write(tmp_path, _LOGS % ("access.log", "stderr")))
    assert config.access_log is not None and config.access_log.path == "access.log"  # made when opened


def test_certificate_path_that_is_a_directory(tmp_path: Path) -> None:
    write_certs(tmp_path)
    text = GOOD.replace("ca: certs/clients.pem", "ca: certs")
    one_problem(tmp_path, text, "10: listeners[1].tls.client_auth.ca:", "is a directory")


def test_empty_certificate_file(tmp_path: Path) -> None:
    write_certs(tmp_path)
    (tmp_path / "certs" / "site.pem").write_text("")
    one_problem(tmp_path, GOOD, "9: listeners[1].tls.certificates[0].cert:", "is empty")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_certificate_file(tmp_path: Path) -> None:
    write_certs(tmp_path)
    (tmp_path / "certs" / "site.pem").chmod(0)
    one_problem(tmp_path, GOOD, "9: listeners[1].tls.certificates[0].cert:", "permission denied")


def test_route_with_no_upstream_and_no_answering_filter(tmp_path: Path) -> None:
    text = BASE + "routes:\n  - name: r\n    filters: [{type: rewrite, strip_prefix: /x}]\n"
    one_problem(tmp_path, text, "7: routes[0].upstream:", "needs an upstream or a filter that answers")


def test_rewrite_regex_needs_replace(tmp_path: Path) -> None:
    text = BASE + "routes:\n  - name: r\n    upstream: app\n    filters:\n      - {type: rewrite, regex: x}\n"
    one_problem(tmp_path, text, "10: routes[0].filters[0].regex:", "needs a 'replace'")


def test_workers_below_one(tmp_path: Path) -> None:
    one_problem(tmp_path, "workers: 0\n" + BASE, "1: workers:", "at least 1")


# --------------------------------------------------------------------------- YAML-level problems

def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = "listeners:\n  - name: web\n    listen: [127.0.0.1:8080\n"
    one_problem(tmp_path, text, "4: (top level):", "YAML syntax error", "flow sequence", "line 3")


def test_yaml_tab_indent(tmp_path: Path) -> None:
    one_problem(tmp_path, "listeners:\n\t- name: web\n", "2: (top level):", "YAML syntax error")


def test_duplicate_key(tmp_path: Path) -> None:
    text = """\
    listeners:
      - name: web
        listen: 127.0.0.1:8080
        name: web2
    """
    one_problem(tmp_path, text, "4: listeners[0].name:", "duplicate key 'name'", "first at line 2")


def test_empty_file(tmp_path: Path) -> None:
    one_problem(tmp_path, "# nothing here\n", "1: (top level):", "empty")


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    one_problem(tmp_path, "\n- a\n- b\n", "2: (top level):", "must be a mapping", "a list")


def test_unsupported_tag(tmp_path: Path) -> None:
    text = "listeners:\n  - name: !secret web\n    listen: 127.0.0.1:8080\n"
    one_problem(tmp_path, text, "2: listeners[0].name:", "unsupported YAML tag '!secret'")


def test_recursive_alias(tmp_path: Path) -> None:
    text = "listeners: [{name: web, listen: 127.0.0.1:8080}]\nupstreams: &a {x: *a}\n"
    one_problem(tmp_path, text, "2: upstreams.x:", "alias")


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    _, issues = problems(tmp_path, "\n".join(lines) + "\n")
    assert any("too large" in issue for issue in issues), issues


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:1: (top level): cannot read the file")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"workers: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:2: (top level): the file is not UTF-8")


# --------------------------------------------------------------------------- everything at once

def test_several_errors_reported_at_once_sorted_by_line(tmp_path: Path) -> None:
    text = """\
    workers: lots
    listeners:
      - name: web
        listen: nowhere
        lisen: x
    server:
      timeouts: {keepalive: forever}
    routes:
      - name: r
        match: {path_regex: "("}
        filters: [{type: nope}]
    """
    file, issues = problems(tmp_path, text)
    prefixes = [issue.split(": ", 2)[0] + ": " + issue.split(": ", 2)[1] for issue in issues]
    assert prefixes == [
        f"{file}:1: workers",
        f"{file}:4: listeners[0].listen",
        f"{file}:5: listeners[0].lisen",
        f"{file}:7: server.timeouts.keepalive",
        f"{file}:10: routes[0].match.path_regex",
        f"{file}:11: routes[0].filters[0].type",
    ]


def test_yaml_and_schema_issues_together(tmp_path: Path) -> None:
    text = """\
    listeners:
      - name: web
        name: again
        listen: 127.0.0.1:8080
        port: 1
    """
    _, issues = problems(tmp_path, text)
    assert [issue.split(":")[1] for issue in issues] == ["3", "5"]
    assert "duplicate key" in issues[0] and "unknown key" in issues[1]


def test_cross_reference_issues_together(tmp_path: Path) -> None:
    text = BASE + "routes:\n  - {name: a, upstream: nope}\n  - {name: a, listeners: [x]}\n"
    _, issues = problems(tmp_path, text)
    keys = [issue.split(": ")[1] for issue in issues]
    assert keys == ["routes[0].upstream", "routes[1].listeners[0]", "routes[1].name", "routes[1].upstream"]


def test_admin_off_loopback_needs_a_token(tmp_path) -> None:
    from portcullis.config import ConfigError, load_config_text

    base = "listeners: [{name: web, listen: 127.0.0.1:8080}]\n"
    with pytest.raises(ConfigError) as info:
        load_config_text("admin: {listen: 0.0.0.0:9901}\n" + base, "g.yaml", str(tmp_path))
    assert "g.yaml:1: admin" in str(info.value)
    assert "needs a token" in str(info.value)
    assert load_config_text("admin: {listen: 0.0.0.0:9901, token: t0k}\n" + base, "g.yaml", str(tmp_path)).admin
    assert load_config_text("admin: {listen: '[::1]:9901'}\n" + base, "g.yaml", str(tmp_path)).admin


# --------------------------------------------------------------------------- HTTP/2 upstreams

H2_BASE = """\
listeners: [{name: web, listen: 127.0.0.1:8080}]
upstreams:
  grpc:
"""


def test_http2_peers_load(tmp_path: Path) -> None:
    text = H2_BASE + "    peers: [{url: 'h2://127.0.0.1:50051'}, {url: 'https://10.0.0.5:8443'}]\n    http2: true\n"
    config = load_config(write(tmp_path, text))
    upstream = config.upstreams["grpc"]
    assert upstream.http2
    assert [upstream.peer_http2(p.url) for p in upstream.peers] == [True, True]
    plain = load_config(write(tmp_path, H2_BASE + "    peers: [{url: 'h2://backend:50051'}]\n"))
    assert plain.upstreams["grpc"].peer_http2("h2://backend:50051")


def test_http2_true_on_a_cleartext_http_peer(tmp_path: Path) -> None:
    text = H2_BASE + "    http2: true\n    peers:\n      - {url: 'http://127.0.0.1:50051'}\n"
    one_problem(tmp_path, text, "6: upstreams.grpc.peers[0].url:", "http2: true is for https://", "use h2://")


def test_one_upstream_speaks_one_protocol(tmp_path: Path) -> None:
    text = H2_BASE + "    peers:\n      - {url: 'h2://127.0.0.1:50051'}\n      - {url: 'https://127.0.0.1:8443'}\n"
    one_problem(tmp_path, text, "6: upstreams.grpc.peers[1].url:", "speaks HTTP/1.1", "line 5 speaks HTTP/2",
                "set http2: true")


def test_unknown_peer_scheme(tmp_path: Path) -> None:
    text = H2_BASE + "    peers: [{url: 'grpc://127.0.0.1:50051'}]\n"
    one_problem(tmp_path, text, "4: upstreams.grpc.peers[0].url:", "h2://")


def test_grpc_health_checks_need_http2_peers(tmp_path: Path) -> None:
    text = H2_BASE + "    peers: [{url: 'http://127.0.0.1:50051'}]\n    health:\n      grpc_service: ''\n"
    one_problem(tmp_path, text, "6: upstreams.grpc.health.grpc_service:", "need HTTP/2 peers")
    good = H2_BASE + "    peers: [{url: 'h2://127.0.0.1:50051'}]\n    health: {grpc_service: helloworld.Greeter}\n"
    health = load_config(write(tmp_path, good)).upstreams["grpc"].health
    assert health is not None and health.grpc_service == "helloworld.Greeter"
