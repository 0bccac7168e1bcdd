"""Monitoring commands: ``monitor baseline``, ``monitor poll``, ``monitor watch``.

    launcher monitor baseline --source CAPTURE_URI --out DIR
    launcher monitor poll --source CAPTURE_URI --baseline DIR [--sink URI ...] [--state URI] [--json]
    launcher monitor poll --endpoint NAME           # what 'launcher deploy --monitor-sink ...' attached
    launcher monitor watch --every 5m ...           # poll on a schedule until Ctrl-C

Thin wrappers over ``monitoring.poller`` and ``monitoring.baseline``; the monitoring package (and its
extra's scipy, scikit-learn, sentence-transformers) is imported inside the commands only.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import typer

from launcher.cli.common import json_option, output, say

monitor_app = typer.Typer(help="Watch an endpoint's captured traffic: drift and hallucination alerts.", no_args_is_help=True)


def _duration(text: str) -> float:
    from launcher.errors import UserInputError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not match or float(match[1]) <= 0:
        raise UserInputError(f"--every {text} is not a duration. To fix: e.g. --every 5m (s, m, h, d)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _attached(endpoint: str | None, source: str | None, baseline: str | None, sinks: list[str]) -> tuple[str, str, list[str]]:
    """The source, baseline and sinks: given, or those ``deploy --monitor-sink`` recorded for the endpoint."""
    from launcher import index
    from launcher.errors import UserInputError

    if endpoint:
        found = index.endpoint_monitor(endpoint)
        if not found and not (source and baseline):
            raise UserInputError(f"endpoint '{endpoint}' has no monitor attached here. To fix: deploy it with --monitor-sink URI, "
                                 "or give --source and --baseline")
        source, baseline = source or found.get("source"), baseline or found.get("baseline")
        sinks = sinks or list(found.get("sinks", []))
    if not source or not baseline:
        raise UserInputError("monitor poll needs --source (the capture URI) and --baseline (a model dir or baseline.json), "
                             "or --endpoint NAME. To fix: see 'launcher monitor poll --help'")
    return source, baseline, sinks or profile_sinks(source)


def profile_sinks(source: str) -> list[str]:
    """No --sink: the alerts topic the profile names (``launcher config from-terraform`` wrote it): SNS for
    a capture in S3, Pub/Sub for one in Cloud Storage, whichever the profile has for a local one."""
    from launcher import profile

    found = profile.load()
    sns = f"sns://{found.sagemaker.alerts_topic}" if found.sagemaker and found.sagemaker.alerts_topic else None
    pubsub = f"pubsub://{found.vertex.alerts_topic}" if found.vertex and found.vertex.alerts_topic else None
    if source.startswith("s3://"):
        return [sns] if sns else []
    if source.startswith("gs://"):
        return [pubsub] if pubsub else []
    return [s for s in (sns, pubsub) if s][:1]


def _render(result: dict[str, Any]) -> None:
    typer.echo(f"Read {result['records']} records from {result['objects']} new capture objects "
               f"({result['skipped']} skipped as unreadable); {result['flagged_count']} state facts their prompt does not support.")
    for item in result["flagged"][:10]:
        typer.echo(f"  flagged {item['eventId']}: {', '.join(item['unsupported'])}")
    for window in result["windows"]:
        drifted = [m for tests in window["drift"].values() for m, t in tests.items() if t["drifted"]]
        rate, share = window["hallucination"], window["unsupported_share"]
        typer.echo(f"Window {window['id']} ({window['records']} records): drift in {', '.join(drifted) or 'nothing'}; "
                   f"hallucination rate {rate['rate']:.1%} (baseline {rate['baseline_rate']:.1%}){' ALERT' if rate['breached'] else ''}, "
                   f"unsupported facts {share['rate']:.1%} (baseline {share['baseline_rate']:.1%}){' ALERT' if share['breached'] else ''}"
                   f"{'; report ' + window['report'] if window['report'] else ''}")
    if not result["windows"]:
        typer.echo(f"No full window yet ({result['pending']} records pending).")
    for alert in result["alerts"]:
        typer.echo(f"ALERT {alert['state']} [{alert['severity']}] {alert['kind']} {alert['metric']} on {alert['endpoint']}: "
                   f"{alert['value']:.4g} (threshold {alert['threshold']:.4g}) id {alert['id']}")


def _poll_once(source: str, baseline_path: str, sinks: list[str], state: str | None, window: int, flush: bool,
               embeddings: bool, alpha: float, report_dir: Path | None, endpoint: str | None,
               latency_p99_ms: float | None = None) -> dict[str, Any]:
    from monitoring.baseline import Baseline
    from monitoring.poller import poll
    from monitoring.sinks import parse_sinks

    parsed = parse_sinks(sinks)
    baseline = Baseline.load(baseline_path)
    return poll(source, baseline, sinks=parsed, state_uri=state, window=window, flush=flush, embeddings=embeddings, alpha=alpha,
                report_dir=report_dir, endpoint=endpoint, latency_p99_ms=latency_p99_ms,
                crash_at=os.environ.get("LAUNCHER_MONITOR_CRASH_AT") or None)  # fault injection for the exactly-once tests


def _common_checks(window: int, alpha: float) -> None:
    from launcher.errors import UserInputError

    if window < 2:
        raise UserInputError(f"--window {window} is too small to test. To fix: e.g. --window 200")
    if not 0 < alpha < 1:
        raise UserInputError(f"--alpha {alpha} is not a probability. To fix: e.g. --alpha 0.01")


SOURCE_HELP = "The capture location: a local folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX."
BASELINE_HELP = "A model dir (its training wrote baseline.json) or a baseline.json."
SINK_HELP = ("Where alerts go (repeatable): sns://TOPIC_ARN, pubsub://projects/P/topics/T, https://HOOK, cloudwatch://NAMESPACE, "
             "log://. Default: the profile's alerts topic (launcher config from-terraform).")


@monitor_app.command("baseline")
def baseline_command(
    source: str = typer.Option(..., "--source", "-s", help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The folder to write baseline.json (and its embeddings) into."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="Embed the baseline (all-MiniLM-L6-v2)."),
    as_json: bool = json_option(),
) -> None:
    """Build a baseline from a capture window (traffic you judged good)."""
    from monitoring.baseline import build_baseline
    from monitoring.records import list_objects, read_object

    exchanges, skipped = [], 0
    for obj in list_objects(source):
        found, bad = read_object(source, obj)
        exchanges += [e for e in found if e.ok]
        skipped += len(bad)
    built = build_baseline([(e.prompt, e.response) for e in exchanges], embeddings=embeddings, source=source,
                           finish_reasons=[e.finish_reason for e in exchanges], latencies_ms=[e.latency_ms for e in exchanges])
    path = built.save(out)
    result = {"baseline": str(path), "records": built.records, "skipped": skipped, "hallucination_rate": built.hallucination_rate,
              "embeddings": built.embeddings is not None}
    output(result, as_json, lambda r: typer.echo(f"Baseline of {r['records']} records ({r['skipped']} skipped) written to "
                                                 f"{r['baseline']}; hallucination rate {r['hallucination_rate']:.1%}."))


@monitor_app.command("poll")
def poll_command(
    source: str = typer.Option(None, "--source", "-s", help=SOURCE_HELP),
    baseline: str = typer.Option(None, "--baseline", help=BASELINE_HELP),
    sink: list[str] = typer.Option([], "--sink", help=SINK_HELP),
    state: str = typer.Option(None, "--state", help="The cursor and alert state: a local file, s3:// or gs:// object "
                                                    "(default: under $LAUNCHER_HOME/monitor/, one per source)."),
    endpoint: str = typer.Option(None, "--endpoint", "-e", help="An endpoint deployed with --monitor-sink: its source, baseline and sinks."),
    window: int = typer.Option(200, "--window", help="Records per tested window."),
    flush: bool = typer.Option(False, "--flush", help="Also test a last partial window (at least 20 records)."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="Embedding drift and sentence support (all-MiniLM-L6-v2)."),
    alpha: float = typer.Option(0.01, "--alpha", help="False-alarm budget per window, across every drift test."),
    report_dir: Path = typer.Option(None, "--report-dir", help="Where each window's HTML report goes (default: beside the state)."),
    latency_p99_ms: float = typer.Option(None, "--latency-p99-ms", help="Alert above this p99 latency (default: twice the baseline's)."),
    as_json: bool = json_option("One JSON object: records, skipped, flagged, drift, alerts, windows, totals."),
) -> None:
    """Score what is new in the capture once, test full windows, send alerts."""
    _common_checks(window, alpha)
    source, baseline, sink = _attached(endpoint, source, baseline, sink)
    result = _poll_once(source, baseline, sink, state, window, flush, embeddings, alpha, report_dir or _default_reports(state, source),
                        endpoint, latency_p99_ms)
    output(result, as_json, _render)


def _default_reports(state: str | None, source: str) -> Path:
    from launcher import index

    if state and "://" not in state:
        return Path(state).parent / "reports"
    return index.home() / "monitor" / "reports"


@monitor_app.command("watch")
def watch_command(
    every: str = typer.Option("5m", "--every", help="Time between polls (30s, 5m, 1h)."),
    source: str = typer.Option(None, "--source", "-s", help=SOURCE_HELP),
    baseline: str = typer.Option(None, "--baseline", help=BASELINE_HELP),
    sink: list[str] = typer.Option([], "--sink", help=SINK_HELP),
    state: str = typer.Option(None, "--state", help="As for poll."),
    endpoint: str = typer.Option(None, "--endpoint", "-e", help="As for poll."),
    window: int = typer.Option(200, "--window", help="Records per tested window."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="As for poll."),
    alpha: float = typer.Option(0.01, "--alpha", help="As for poll."),
    report_dir: Path = typer.Option(None, "--report-dir", help="As for poll."),
    polls: int = typer.Option(0, "--polls", help="Stop after this many polls (0: until Ctrl-C)."),
    as_json: bool = json_option("One JSON object a line, per poll."),
) -> None:
    """Poll on a schedule until Ctrl-C. A failed poll is reported and retried at the next tick."""
    from launcher.cli.common import print_json
    from launcher.errors import LauncherError, UserInputError

    seconds = _duration(every)
    _common_checks(window, alpha)
    source, baseline, sink = _attached(endpoint, source, baseline, sink)
    done = 0
    try:
        while True:
            started = time.monotonic()
            try:
                result = _poll_once(source, baseline, sink, state, window, False, embeddings, alpha,
                                    report_dir or _default_reports(state, source), endpoint)
                print_json(result, indent=None) if as_json else _render(result)
            except UserInputError:
                raise
            except LauncherError as exc:
                say(f"Poll failed: {exc} (retrying in {every})", as_json)
            done += 1
            if polls and done >= polls:
                return
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
