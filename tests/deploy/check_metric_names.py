#!/usr/bin/env python3
"""Checks that every metric the Grafana dashboard and the alert rules query is one the
server exports: each name found in their PromQL must be listed in deploy/metrics.txt. Also
checks that the dashboard is templated by model_name: every selector of a panel's query
filters on model_name=~"$model_name", and panel ids are unique.

Usage: check_metric_names.py <metrics.txt> <dashboard.json> <alerts.yml>
           exit 1 listing the unknown names
       check_metric_names.py --self-test      the extractor on known expressions
"""
import json
import re
import sys

import yaml

# PromQL words that are not metric names (functions are recognised by the "(" after them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan", "atan2", "le"}
# Synthetic series Prometheus itself makes.
BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr):
    """The metric names a PromQL expression (or Grafana label_values query) reads."""
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    # Label lists of aggregations and vector matching.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def base_name(name, histograms):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def dashboard_exprs(path):
    with open(path) as f:
        dash = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((f"panel '{p.get('title')}'", t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            exprs.append((f"variable '{v['name']}'", q))
    return exprs


def alert_exprs(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    return [(f"rule '{r.get('alert') or r.get('record')}'", r["expr"])
            for g in rules["groups"] for r in g["rules"]]


def dashboard_problems(path):
    """Panels that ignore the model_name variable, and duplicate panel ids."""
    with open(path) as f:
        dash = json.load(f)
    problems, ids = [], set()

    def walk(panels):
        for p in panels:
            if p.get("id") is None or p.get("id") in ids:
                problems.append(f"panel '{p.get('title')}': missing or duplicate id {p.get('id')}")
            ids.add(p.get("id"))
            for t in p.get("targets", []):
                for m in re.finditer(r"\b(spanserve_\w+)(\{[^}]*\})?", t.get("expr", "")):
                    if '$model_name' not in (m.group(2) or "") or "model_name=~" not in m.group(2):
                        problems.append(f"panel '{p.get('title')}': {m.group(1)} is not "
                                        'filtered by model_name=~"$model_name"')
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    if "model_name" not in [v.get("name") for v in dash.get("templating", {}).get("list", [])]:
        problems.append("no model_name variable")
    return problems


def load_metrics(path):
    types = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if line:
                types[line[0]] = line[1]
    return types


def self_test():
    cases = {
        'histogram_quantile(0.99, sum by (le, model_name) (rate(a_bucket{x="y"}[5m])))': {"a_bucket"},
        "b > 10 and delta(b[5m]) > 0": {"b"},
        'sum by (layer) (rate(c{m=~"$model_name"}[$__rate_interval])) / on (layer) group_left sum(d)': {"c", "d"},
        "label_values(e, model_name)": {"e"},
        'up{job=~"spanserve.*"} == 0': {"up"},
        "f offset 5m * 1e3": {"f"},
    }
    ok = True
    for expr, want in cases.items():
        got = metric_names(expr)
        if got != want:
            print(f"self-test: {expr!r}: got {sorted(got)}, want {sorted(want)}")
            ok = False
    return ok


def main():
    if sys.argv[1:] == ["--self-test"]:
        return 0 if self_test() else 1
    metrics_txt, dashboard, alerts = sys.argv[1:4]
    types = load_metrics(metrics_txt)
    histograms = {n for n, t in types.items() if t == "histogram"}
    exprs = dashboard_exprs(dashboard) + alert_exprs(alerts)
    unknown = {}
    used = set()
    for where, expr in exprs:
        for name in metric_names(expr):
            if name in BUILTIN:
                continue
            base = base_name(name, histograms)
            used.add(base)
            if base not in types or (base != name and types[base] != "histogram"):
                unknown.setdefault(name, []).append(where)
    problems = dashboard_problems(dashboard)
    if unknown:
        print("metrics used in deploy/ but not listed in deploy/metrics.txt:")
        for name, where in sorted(unknown.items()):
            print(f"  {name}: {', '.join(sorted(set(where)))}")
    if problems:
        print("dashboard problems:\n  " + "\n  ".join(problems))
    if unknown or problems:
        return 1
    print(f"{len(exprs)} expressions use {len(used)} metrics, all in deploy/metrics.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
