"""How long `import launcher` and `launcher --help` take, next to the cloud SDKs measured the same way.

    .venv/bin/python benchmarks/import_time.py [--runs 9] [--json-only] [--check]

Each figure is the median wall time of N fresh interpreters (after one warm-up run, so the files are in
the page cache: "cold interpreter, warm disk"), minus nothing: it includes Python's own start-up, which
is measured separately as `python -c pass`. The `-X importtime` column is the interpreter's own count
of the time spent importing the statement's modules (median of the same runs), start-up excluded.
Budgets (issue 3): `import launcher` <= 150 ms, `launcher --help` <= 400 ms; `--check` exits 1 when one
is missed. SDKs that are not installed are listed as such.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import statistics
import subprocess
import sys
import time

HELP = "import sys; sys.argv = ['launcher', '--help']\nfrom launcher.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass"

CASES = [
    # name, code run with `python -c`, budget in ms (None: for comparison), module that must be installed
    ("python -c pass", "pass", None, None),
    ("import launcher", "import launcher", 150, "launcher"),
    ("launcher --help", HELP, 400, "launcher"),
    ("import boto3", "import boto3", None, "boto3"),
    ("from google.cloud import aiplatform_v1", "from google.cloud import aiplatform_v1", None, "google.cloud.aiplatform_v1"),
    ("from google.cloud import aiplatform", "from google.cloud import aiplatform", None, "google.cloud.aiplatform"),
]

_IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def installed(module: str | None) -> bool:
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_once(code: str) -> tuple[float, float]:
    """(wall ms, import ms by -X importtime: the sum of top-level imports' cumulative times)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    wall = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"`{code}` failed: {result.stderr.strip().splitlines()[-1:]}")
    imported = 0
    for line in result.stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match and len(match.group(3)) == 1:  # top level: one space before the name
            imported += int(match.group(2))
    return wall, imported / 1000


def measure(runs: int) -> list[dict]:
    rows = []
    baseline_imports = 0.0
    for name, code, budget, module in CASES:
        if not installed(module):
            rows.append({"name": name, "installed": False, "budget_ms": budget})
            continue
        run_once(code)  # warm-up: load the files into the page cache
        walls, imports = zip(*(run_once(code) for _ in range(runs)))
        imported = statistics.median(imports)
        if name == "python -c pass":
            baseline_imports = imported  # site-packages' .pth files and the like, in every run
        row = {
            "name": name,
            "installed": True,
            "wall_ms": round(statistics.median(walls), 1),
            "wall_min_ms": round(min(walls), 1),
            "import_ms": round(max(imported - baseline_imports, 0.0) if name != "python -c pass" else imported, 1),
            "budget_ms": budget,
        }
        if budget is not None:
            row["within_budget"] = row["wall_ms"] <= budget
        rows.append(row)
    return rows


def print_table(rows: list[dict], runs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Import time, median of {runs} fresh interpreters (Python {platform.python_version()})")
    for column in ("statement", "wall ms", "min ms", "-X importtime ms", "budget ms", ""):
        table.add_column(column, justify="left" if column in ("statement", "") else "right")
    for row in rows:
        if not row["installed"]:
            table.add_row(row["name"], "-", "-", "-", "", "not installed")
            continue
        verdict = "" if row["budget_ms"] is None else ("ok" if row["within_budget"] else "[red]over budget[/]")
        table.add_row(
            row["name"], f"{row['wall_ms']:.0f}", f"{row['wall_min_ms']:.0f}", f"{row['import_ms']:.0f}",
            "" if row["budget_ms"] is None else str(row["budget_ms"]), verdict,
        )
    Console().print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="interpreters per statement (default 9)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when launcher misses a budget")
    args = parser.parse_args()
    rows = measure(args.runs)
    if not args.json_only:
        print_table(rows, args.runs)
    print(json.dumps({"python": platform.python_version(), "runs": args.runs, "results": rows}))
    missed = [row["name"] for row in rows if row.get("within_budget") is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
