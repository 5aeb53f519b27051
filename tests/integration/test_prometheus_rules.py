"""The Prometheus rules and the Grafana dashboard shipped for users who run
their own Prometheus (etc/prometheus, etc/grafana): promtool checks the
rules and runs their unit tests; the rules carry every alert built into
the monitor (src/alerts/alerts.c); the dashboard is valid JSON whose
queries name only series cyan produces.

Needs promtool (Debian package prometheus, installed by scripts/deps.sh
test). Without it the tests fail, never skip: a CI without promtool would
otherwise pass rules nobody checked.
"""

import json
import os
import re
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RULES = os.path.join(REPO, "etc", "prometheus", "cyan-alerts.yml")
RULES_TEST = os.path.join(REPO, "etc", "prometheus", "cyan-alerts.test.yml")
DASHBOARD = os.path.join(REPO, "etc", "grafana", "cyan-dashboard.json")
ALERTS_C = os.path.join(REPO, "src", "alerts", "alerts.c")
METRICS_H = os.path.join(REPO, "src", "health", "metrics.h")

# Series the monitor produces besides the registry's (docs: MONITOR spec,
# docs/operations.md "Metrics"); the registry's come from metrics.h.
MONITOR_SERIES = {
    "cyan_shard_up", "cyan_shard_stale", "cyan_shard_heartbeat_age_seconds",
    "cyan_shard_last_heartbeat_timestamp_seconds", "cyan_shard_progress_total",
    "cyan_shard_last_progress_timestamp_seconds", "cyan_shard_backlog",
    "cyan_shard_restarts_total", "cyan_canary_success_total", "cyan_canary_failure_total",
    "cyan_canary_latency_seconds", "cyan_canary_last_success_timestamp_seconds",
    "cyan_canary_up", "cyan_build_info", "cyan_monitor_up",
    "cyan_supervisor_heartbeat_age_seconds", "cyan_process_cpu_seconds_total",
    "cyan_process_resident_memory_bytes", "cyan_alerts_firing",
}


def promtool():
    path = shutil.which("promtool")
    assert path, ("promtool not found: install it with `scripts/deps.sh test` "
                  "(Debian package prometheus)")
    return path


def run(*args):
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def known_series():
    names = set(MONITOR_SERIES)
    text = open(METRICS_H, encoding="utf-8").read()
    for name, kind in re.findall(r"X\((\w+), (CY_METRIC_COUNTER|CY_METRIC_GAUGE)", text):
        names.add("cyan_" + name + ("_total" if kind == "CY_METRIC_COUNTER" else ""))
    return names


def series_in(expr):
    return set(re.findall(r"\bcyan_[a-z0-9_]+", expr))


def rule_alerts():
    return re.findall(r"^\s*- alert: (\w+)\s*$", open(RULES, encoding="utf-8").read(), re.M)


def test_promtool_check_rules():
    rc, out = run(promtool(), "check", "rules", RULES)
    assert rc == 0, out
    assert "SUCCESS: %d rules found" % len(rule_alerts()) in out, out


def test_promtool_test_rules():
    rc, out = run(promtool(), "test", "rules", RULES_TEST)
    assert rc == 0, out
    assert "SUCCESS" in out, out


def test_rules_carry_every_builtin_alert_and_each_is_tested():
    builtin = re.findall(r'rule_add\(r, "(\w+)"', open(ALERTS_C, encoding="utf-8").read())
    assert len(builtin) >= 9, builtin
    alerts = rule_alerts()
    assert len(alerts) == len(set(alerts))
    missing = set(builtin) - set(alerts)
    assert not missing, "built-in alerts without a Prometheus rule: %s" % sorted(missing)
    # Each alert has a test case that expects it to fire (a non-empty
    # exp_alerts right after its alertname).
    tests = open(RULES_TEST, encoding="utf-8").read()
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", tests))
    assert set(alerts) <= fired, "alerts no test sees firing: %s" % sorted(set(alerts) - fired)


def test_rules_name_only_real_series():
    known = known_series()
    text = open(RULES, encoding="utf-8").read()
    exprs = re.findall(r"expr: (?:\|\n((?:\s{10}.*\n)+)|(.*)\n)", text)
    assert len(exprs) == len(rule_alerts())
    for block, line in exprs:
        unknown = series_in(block or line) - known
        assert not unknown, "rule names unknown series %s" % sorted(unknown)


def test_grafana_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    titles = {p["title"] for p in dash["panels"]}
    for want in ("Shards up", "Heartbeat age", "Progress rate", "Backlog", "Messages in / out",
                 "Drops", "Canary latency", "Restarts", "Firing alerts"):
        assert want in titles, want
    known = known_series()
    ids = set()
    for p in dash["panels"]:
        assert p["id"] not in ids
        ids.add(p["id"])
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            unknown = series_in(t["expr"]) - known
            assert not unknown, "%s: unknown series %s" % (p["title"], sorted(unknown))
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
