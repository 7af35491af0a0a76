"""Print the figures a fault-suite run wrote (``DAGSERVE_FAULT_REPORT``) as the markdown table
of docs/reliability.md: ``python tests/faults/report.py logs/fault-report.jsonl``."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict


def main(path: str) -> int:
    rows: "OrderedDict[str, dict]" = OrderedDict()
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            rows[row["test"]] = row  # a test run twice keeps its last figures
    print("| test | requests | 5xx or unanswered | unanswered | time to recover (s) | notes |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows.values():
        recover = "" if row["recover_s"] is None else f"{row['recover_s']:g}"
        print(f"| `{row['test']}` | {row['requests']} | {row['failures']} | "
              f"{row['unanswered']} | {recover} | {row['notes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
