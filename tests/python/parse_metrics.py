"""Parses Prometheus text exposition from stdin with the Prometheus project's own client library
and prints each metric family as JSON: {name: {"type": ..., "samples": [[name, labels], ...]}}.

A parse error exits non-zero with the parser's message. Used by tests/e2e/metrics.rs.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
try:
    for family in text_string_to_metric_families(sys.stdin.read()):
        families[family.name] = {
            "type": family.type,
            "samples": [[sample.name, sample.labels] for sample in family.samples],
        }
except Exception as e:  # the parser raises ValueError and friends on bad input
    sys.exit(f"not valid Prometheus exposition: {e}")
json.dump(families, sys.stdout)
