#!/usr/bin/env python3
"""Parses Prometheus/OpenMetrics text on stdin with the reference parser
(prometheus_client) and prints {"sample name{label=value,...}": value} as
JSON. A parse error exits non-zero: the tests use this to prove /metrics is
valid exposition format, not just text that looks like it."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
json.dump(out, sys.stdout)
