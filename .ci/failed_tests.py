"""CI helper for the gated benchmark run (.ci/run).

``failed_tests.py RUN.xml``: print the node ids of the tests that failed or errored in a JUnit
report, one per line (the retry re-runs exactly those).
``failed_tests.py --ratios A.json [B.json ...]``: print each benchmark's ratio and bound from
pytest-benchmark JSON reports (later reports are retries).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET


def failed_node_ids(path: str) -> list[str]:
    ids = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        module = case.get("classname", "").replace(".", "/") + ".py"
        node = f"{module}::{case.get('name')}"
        if node not in ids:
            ids.append(node)
    return ids


def print_ratios(paths: list[str]) -> None:
    for path in paths:
        for bench in json.load(open(path))["benchmarks"]:
            info = bench["extra_info"]
            if "ratio" in info:
                print(f"{path}: {bench['name']}: ratio {info['ratio']:.3f} "
                      f"(bound {info['bound_now']}, goal {info['goal']})")


if __name__ == "__main__":
    if sys.argv[1] == "--ratios":
        print_ratios(sys.argv[2:])
    else:
        print("\n".join(failed_node_ids(sys.argv[1])))
