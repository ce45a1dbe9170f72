"""``steadyserve probe URL``: flags → discovery → battery → report; exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any, TextIO
from urllib.parse import urlsplit

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
API_KEY_ENV = "STEADYSERVE_PROBE_API_KEY"

DESCRIPTION = """\
Test an inference endpoint (steadyserve, KServe, vLLM, TorchServe's KServe wrapper, Triton,
MLServer: KServe V1, Open Inference Protocol V2, OpenAI API) for the failures that take servers
down: 5xx for client errors, hangs, dropped connections, 200 for failures, readiness that lies,
a server that serves worse afterwards. Every case is followed by a good request on the same
keep-alive connection, one on a fresh connection, and a readiness read.

Exit code: 0 nothing broke, 1 a case failed, 2 usage error (unreachable URL, bad flag).
Traffic: only to URL; one case at a time; at most --burst concurrent requests; bodies up to
40 MiB (full run only). It never tries credentials or exploits, and never prints the API key."""


def _positive(kind: type) -> Any:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {raw!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {raw!r}")
        return value

    return parse


def _burst(raw: str) -> int:
    value = _positive(int)(raw)
    if value > 256:
        raise argparse.ArgumentTypeError(f"at most 256 concurrent requests, got {raw!r}")
    return int(value)


def _header(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value or "\r" in value:
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {raw.split(':')[0]!r}…")
    return name, value.strip()


def _protocols(raw: str) -> list[str]:
    from steadyserve.probe.discovery import PROTOCOLS

    names = [p.strip().lower() for p in raw.split(",") if p.strip()]
    bad = [p for p in names if p not in PROTOCOLS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown protocol {', '.join(bad) or raw!r} (valid: {', '.join(PROTOCOLS)})"
        )
    return names


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``probe`` on the CLI's sub-parsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "probe",
        help="test any inference endpoint for the failures that take servers down",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", default=None, help="probe only this model (default: all listed)")
    p.add_argument(
        "--protocol",
        type=_protocols,
        action="extend",
        default=None,
        help="only these protocols: openai, v2, v1 (comma-separated or repeated)",
    )
    p.add_argument(
        "--api_key",
        default=None,
        help=f"sent as 'Authorization: Bearer KEY'; never printed [env {API_KEY_ENV}]",
    )
    p.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header on every request (repeatable); values are never printed",
    )
    p.add_argument(
        "--case_timeout",
        type=_positive(float),
        default=10.0,
        help="longest a request may take before it counts as a hang, seconds (default: 10)",
    )
    p.add_argument("--quick", action="store_true", help="the quick subset (under 30 s)")
    p.add_argument("--dry_run", action="store_true", help="discover, list the cases, send no case")
    p.add_argument(
        "--cases",
        action="append",
        default=None,
        metavar="PATTERN",
        help="only cases matching this glob, e.g. 'openai.*' (repeatable)",
    )
    p.add_argument(
        "--burst",
        type=_burst,
        default=32,
        help="concurrent requests in the burst cases, at most 256 (default: 32)",
    )
    p.add_argument("--json", dest="json_file", default=None, metavar="FILE", help="JSON report")
    p.add_argument("--junit", default=None, metavar="FILE", help="JUnit XML report")
    p.add_argument("-v", "--verbose", action="store_true", help="show passed and skipped cases")
    return p


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``probe`` command; the exit code."""
    from steadyserve.probe.discovery import UsageError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return asyncio.run(_run(args, out, err))
    except UsageError as exc:
        err.write(f"steadyserve probe: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.write("steadyserve probe: interrupted\n")
        return EXIT_USAGE


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from steadyserve.probe import report
    from steadyserve.probe.battery import select
    from steadyserve.probe.discovery import UsageError, discover
    from steadyserve.probe.runner import Options, Runner
    from steadyserve.probe.wire import Target

    split = urlsplit(args.url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise UsageError(f"URL must be http(s)://host[:port][/prefix], got {args.url!r}")
    if split.query or split.fragment:
        raise UsageError("URL must not carry a query or fragment")
    headers = list(args.header)
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    target = Target(args.url, tuple(headers))
    started = time.monotonic()
    found = await discover(
        target,
        model=args.model,
        protocols=set(args.protocol) if args.protocol else None,
        timeout=args.case_timeout,
    )
    cases = select(args.quick, args.cases)
    for line in report.plan(found, cases, args.quick, args.burst, args.case_timeout):
        out.write(line + "\n")
    if args.dry_run:
        out.write(report.dry_run_listing(found, cases) + "\n")
        return EXIT_OK
    out.flush()
    applicable = sum(c.protocol in m.protocols for m in found.models for c in cases)
    progress = report.Progress(applicable + len(found.models), err)
    runner = Runner(found, cases, Options(args.case_timeout, args.burst), progress.update)
    try:
        results = await runner.run()
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    code = EXIT_FAILED if any(r.verdict == "fail" for r in results) else EXIT_OK
    out.write(report.table(results, verbose=args.verbose) + "\n")
    out.write(report.summary(results, elapsed) + "\n")
    if args.json_file:
        report.write_json(args.json_file, report.to_json(found, results, elapsed, code))
    if args.junit:
        report.write_junit(args.junit, found, results, elapsed)
    return code


def main(argv: list[str] | None = None) -> int:
    """The same as ``steadyserve probe ARGS``."""
    from steadyserve.cli import main as cli_main

    return cli_main(["probe", *(sys.argv[1:] if argv is None else argv)])
