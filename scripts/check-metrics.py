#!/usr/bin/env python3
"""Checks a Prometheus text exposition read from stdin: it must parse with
the official Python client's parser, and follow the naming rules wasmcsi
promises (https://prometheus.io/docs/practices/naming/): a `wasmcsi_`
prefix, HELP on every family, counters ending in `_total`, a base unit on
histograms, cumulative buckets whose `+Inf` equals `_count`. Exits 1 with
one line per problem. With `--openmetrics` the input is OpenMetrics 1.0
text, read by the same client's OpenMetrics parser (counter families are
named there without `_total`; their samples carry it)."""

import re
import sys
from collections import defaultdict

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"[a-z_][a-z0-9_]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
UNITS = ("_seconds", "_bytes")


def check(text, openmetrics=False):
    problems = check_raw(text, openmetrics)
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    try:
        families = list(parse(text))
    except ValueError as e:
        return problems + [f"does not parse: {e}"]
    if not families:
        return ["no metric families"]
    for f in families:
        where = f"{f.name} ({f.type})"
        if not f.name.startswith("wasmcsi_") or not NAME.fullmatch(f.name):
            problems.append(f"{where}: not a wasmcsi_ snake_case name")
        if not f.documentation.strip():
            problems.append(f"{where}: no HELP text")
        for s in f.samples:
            for label in s.labels:
                if not LABEL.fullmatch(label) or label.startswith("__"):
                    problems.append(f"{where}: bad label name {label!r}")
        if f.type == "gauge":
            if f.name.endswith("_total"):
                problems.append(f"{where}: a gauge named like a counter")
        if f.type == "histogram":
            if not f.name.endswith(UNITS):
                problems.append(f"{where}: no base unit suffix {UNITS}")
            problems += check_histogram(where, f.samples)
        if f.type not in ("counter", "gauge", "histogram"):
            problems.append(f"{where}: unexpected type")
    return problems


def check_raw(text, openmetrics=False):
    """What the parser forgives: it adds `_total` to counter samples itself,
    so the names as written are checked here."""
    problems = []
    declared = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            declared[name] = kind
            if openmetrics:
                if name.endswith("_total"):
                    problems.append(f"{name} ({kind}): an OpenMetrics family named with _total")
            elif (kind == "counter") != name.endswith("_total"):
                problems.append(f"{name} ({kind}): only counters end in _total")
        elif line and not line.startswith("#"):
            name = re.match(r"[^{ ]+", line).group(0)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if openmetrics and name.endswith("_total"):
                if declared.get(name[: -len("_total")]) == "counter":
                    continue
            if name not in declared and declared.get(base) != "histogram":
                problems.append(f"{name}: a sample with no TYPE line")
    return problems


def check_histogram(where, samples):
    problems = []
    series = defaultdict(lambda: {"buckets": [], "count": None})
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name.endswith("_bucket"):
            series[key]["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            series[key]["count"] = s.value
    for key, h in series.items():
        buckets = sorted(h["buckets"])
        counts = [c for _, c in buckets]
        if counts != sorted(counts):
            problems.append(f"{where} {dict(key)}: buckets are not cumulative")
        if not buckets or buckets[-1][0] != float("inf"):
            problems.append(f"{where} {dict(key)}: no +Inf bucket")
        elif buckets[-1][1] != h["count"]:
            problems.append(f"{where} {dict(key)}: +Inf bucket != _count")
    return problems


if __name__ == "__main__":
    found = check(sys.stdin.read(), openmetrics="--openmetrics" in sys.argv[1:])
    for p in found:
        print(p)
    sys.exit(1 if found else 0)
