"""The report: a progress bar while the battery runs, a table at the end, ``--json`` and
``--junit`` files for CI. Nothing here ever sees the shared request headers (API key, ``-H``)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any, TextIO

from steadyserve.probe.cases import Case
from steadyserve.probe.discovery import Found
from steadyserve.probe.runner import Result

COLUMNS = ("case", "model", "protocol", "status", "latency", "verdict", "why")


class Progress:
    """``[#####.....] 12/40 case`` on a terminal (stderr); silent when stderr is not a TTY."""

    def __init__(
        self, total: int, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.failed = 0

    def update(self, result: Result) -> None:
        self.done += 1
        self.failed += result.verdict == "fail"
        if not self.enabled:
            return
        width = 30
        filled = min(width, width * self.done // self.total)
        bar = "#" * filled + "." * (width - filled)
        text = f"\r[{bar}] {self.done}/{self.total} failed {self.failed}  {result.case[:40]:<40}"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def _latency(result: Result) -> str:
    return "-" if result.latency_s is None else f"{result.latency_s * 1000:.0f} ms"


def table(results: list[Result], width: int | None = None, verbose: bool = False) -> str:
    """The terminal table. Passing and skipped cases show only with ``verbose``."""
    width = width or shutil.get_terminal_size((140, 20)).columns
    shown = [r for r in results if verbose or r.verdict == "fail"]
    if not shown:
        return "no case failed"
    rows = [
        (r.case, r.model, r.protocol, r.status, _latency(r), r.verdict.upper(), r.why)
        for r in shown
    ]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(COLUMNS[:-1])]
    widths = [min(w, 40) for w in widths]
    room = max(30, width - sum(widths) - 2 * len(widths))
    lines = []
    for row in [COLUMNS, *rows]:
        cells = [str(c)[:w].ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(row[-1])[:room]]).rstrip())
    return "\n".join(lines)


def summary(results: list[Result], elapsed_s: float) -> str:
    counts = Counter(r.verdict for r in results)
    kinds = Counter(kind.value for r in results for kind, _ in r.faults)
    line = (
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
        f"in {elapsed_s:.1f}s"
    )
    if kinds:
        line += " - " + ", ".join(f"{k}: {v}" for k, v in kinds.most_common())
    return line


def plan(found: Found, cases: list[Case], quick: bool, burst: int, timeout: float) -> list[str]:
    """The first lines: what was found and what will be sent."""
    lines = found.summary()
    lines.append(
        f"plan: {len(cases)} cases ({'quick' if quick else 'full'}) per model, one at a time, "
        f"each followed by a good request on the same connection, one on a fresh connection "
        f"and a readiness read; at most {burst} concurrent requests (burst), "
        f"{timeout:g}s per request"
    )
    return lines


def _cap(name: str) -> str:
    return "completions or chat" if name == "gen" else name


def dry_run_listing(found: Found, cases: list[Case]) -> str:
    lines = []
    for model in found.models:
        for case in cases:
            if case.protocol not in model.protocols:
                continue
            when = ""
            if case.needs:
                when = (
                    " (when the model "
                    + ", ".join(
                        f"lacks {_cap(n[1:])}" if n.startswith("!") else f"serves {_cap(n)}"
                        for n in case.needs
                    )
                    + ")"
                )
            lines.append(
                f"{model.name:<24} {case.name:<36} expect {case.expect.value:<16} {case.about}{when}"
            )
    return "\n".join(lines)


def to_json(
    found: Found, results: list[Result], elapsed_s: float, exit_code: int
) -> dict[str, Any]:
    return {
        "target": found.target.base,
        "server": found.server,
        "protocols": sorted(found.protocols),
        "models": [
            {
                "name": m.name,
                "protocols": sorted(m.protocols),
                "capabilities": m.caps,
                "declined": m.declined,
                "baseline_s": round(m.baseline_s, 4),
            }
            for m in found.models
        ],
        "readiness": found.ready_path,
        "summary": dict(Counter(r.verdict for r in results)),
        "elapsed_s": round(elapsed_s, 2),
        "exit_code": exit_code,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": [r.to_dict() for r in results],
    }


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    """Characters XML 1.0 cannot hold (NUL, ESC, lone surrogates) shown as escapes."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def write_junit(path: str, found: Found, results: list[Result], elapsed_s: float) -> None:
    counts = Counter(r.verdict for r in results)
    suite = ET.Element(
        "testsuite",
        name="steadyserve-probe",
        tests=str(len(results)),
        failures=str(counts["fail"]),
        skipped=str(counts["skip"]),
        errors="0",
        time=f"{elapsed_s:.3f}",
        hostname=found.target.base,
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"probe.{r.model}.{r.protocol}",
            name=r.case,
            time=f"{r.latency_s or 0:.3f}",
        )
        if r.verdict == "fail":
            failure = ET.SubElement(case, "failure", message=_xml(r.why[:500]), type="probe")
            failure.text = _xml(f"request: {r.request}\nanswer: {r.answer or r.status}\n{r.why}")
        elif r.verdict == "skip":
            ET.SubElement(case, "skipped", message=_xml(r.note))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
