"""``steadyserve probe`` against fake servers: each verdict kind fires on the fault that
causes it (and only the case that triggers it fails), and a healthy fake passes everything."""

from __future__ import annotations

import contextlib
import io
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from steadyserve.cli import main
from tests.probe_fake import FakeServer


def probe(url: str, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any] | None, str, str]:
    """Run the probe in-process: (exit code, JSON report, stdout, stderr)."""
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["probe", url, "--json", str(report), "--case_timeout", "3", *args])
    data = json.loads(report.read_text()) if report.exists() else None
    return code, data, out.getvalue(), err.getvalue()


def result(report: dict[str, Any] | None, case: str) -> dict[str, Any]:
    assert report is not None
    return next(r for r in report["results"] if r["case"] == case)


def kinds(r: dict[str, Any]) -> set[str]:
    return {f["kind"] for f in r["faults"]}


def failed(report: dict[str, Any] | None) -> set[str]:
    assert report is not None
    return {r["case"] for r in report["results"] if r["verdict"] == "fail"}


def test_healthy_fake_passes_the_full_battery(tmp_path: Path) -> None:
    junit = tmp_path / "probe.xml"
    with FakeServer() as fake:
        code, report, out, _ = probe(fake.url, tmp_path, "--junit", str(junit), "--burst", "8")
    assert code == 0, out
    assert failed(report) == set()
    chat = result(report, "openai.chat_unsupported")
    assert (chat["verdict"], chat["status"]) == ("pass", "400")
    assert result(report, "openai.burst")["status"] == "200×8"
    assert result(report, "openai.stream_never_read")["verdict"] == "pass"
    assert out.splitlines()[0].startswith(f"target: {fake.url}")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert report is not None and len(suite.findall("testcase")) == len(report["results"])


def test_healthy_v2_fake_passes_and_is_found_by_its_repository_index(tmp_path: Path) -> None:
    with FakeServer("v2_only") as fake:
        code, report, out, _ = probe(fake.url, tmp_path, "--burst", "4")
    assert code == 0, out
    assert "model fake: v2; V2 inputs x:FP32[-1]" in out
    ran = {r["case"] for r in report["results"] if r["verdict"] == "pass"} if report else set()
    assert {"v2.infer", "v2.wrong_shape", "v2.nonfinite", "v2.byte_count", "v2.burst"} <= ran


def test_5xx_for_a_client_error_v2(tmp_path: Path) -> None:
    with FakeServer("v2_only", "v2_500_bad_shape") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "v2.*")
    assert code == 1
    assert failed(report) == {"v2.wrong_shape", "v2.huge_shape"}
    assert kinds(result(report, "v2.wrong_shape")) == {"server_error"}


def test_early_rejection_of_an_oversized_body_is_no_fault(tmp_path: Path) -> None:
    # HTTP lets a server answer 413 and close before reading the body; the client may then
    # see the 413 or only a reset - neither is a dropped answer, and the follow-ups pass.
    with FakeServer("early_413") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "openai.oversized_body")
    assert code == 0
    r = result(report, "openai.oversized_body")
    assert r["verdict"] == "pass" and r["status"] in ("413", "refused")


def test_5xx_for_a_client_error(tmp_path: Path) -> None:
    with FakeServer("500_bad_temperature") as fake:
        code, report, out, _ = probe(fake.url, tmp_path, "--cases", "openai.*temperature")
    assert code == 1
    assert failed(report) == {"openai.negative_temperature", "openai.nan_temperature"}
    r = result(report, "openai.nan_temperature")
    assert kinds(r) == {"server_error"} and r["status"] == "500"
    assert "NaN" in r["request"]
    assert "openai.nan_temperature" in out and "5xx for a client error" in out


def test_hang_past_the_case_timeout(tmp_path: Path) -> None:
    with FakeServer("hang_bad_top_p") as fake:
        start = time.monotonic()
        code, report, _, _ = probe(
            fake.url, tmp_path, "--cases", "openai.top_p_out_of_range", "--case_timeout", "1"
        )
        took = time.monotonic() - start
    assert code == 1
    r = result(report, "openai.top_p_out_of_range")
    assert r["status"] == "timeout" and kinds(r) == {"hang"}  # others were still served
    assert took < 15


def test_dropped_connection(tmp_path: Path) -> None:
    with FakeServer("drop_malformed") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "openai.malformed_json")
    assert code == 1
    r = result(report, "openai.malformed_json")
    assert r["status"] == "dropped" and kinds(r) == {"dropped"}


def test_keep_alive_connection_closed_after_an_error(tmp_path: Path) -> None:
    with FakeServer("close_after_error") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "openai.mistyped_max_tokens")
    assert code == 1
    r = result(report, "openai.mistyped_max_tokens")
    assert r["status"] == "400" and kinds(r) == {"dropped"}
    assert "keep-alive" in r["why"]


def test_200_for_a_failure(tmp_path: Path) -> None:
    with FakeServer("ok_negative_max_tokens") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "openai.negative_max_tokens")
    assert code == 1
    r = result(report, "openai.negative_max_tokens")
    assert r["status"] == "200" and kinds(r) == {"ok_for_failure"}


def test_readiness_that_says_ready_while_requests_fail(tmp_path: Path) -> None:
    # KServe's T5 failure: one request kills generation, health stays green.
    with FakeServer("poison_nan") as fake:
        code, report, _, _ = probe(
            fake.url, tmp_path, "--cases", "openai.nan_temperature", "--cases", "openai.unicode"
        )
    assert code == 1
    r = result(report, "openai.nan_temperature")
    assert r["status"] == "400"  # the answer itself was right
    assert kinds(r) == {"readiness_lies", "degraded"}
    assert "says ready" in r["why"]
    later = result(report, "openai.unicode")  # every later case fails too
    assert later["verdict"] == "fail" and later["status"] == "500"


def test_kserve_t5_failure_chat_kills_generation(tmp_path: Path) -> None:
    # kserve/kserve#3957: chat on T5 answered 200, then every request hung, health green.
    with FakeServer("chat_kills") as fake:
        code, report, out, _ = probe(fake.url, tmp_path, "--quick", "--case_timeout", "1")
    assert code == 1
    base = result(report, "baseline")
    assert kinds(base) == {"hang", "readiness_lies"}
    assert base["note"] == "the server broke during the capability checks"
    assert result(report, "openai.malformed_json")["verdict"] == "skip"  # nothing to judge
    assert "baseline" in out


def test_readiness_that_says_not_ready_while_requests_succeed(tmp_path: Path) -> None:
    with FakeServer("unready_after_huge_n") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "openai.huge_n")
    assert code == 1
    r = result(report, "openai.huge_n")
    assert kinds(r) == {"readiness_lies"} and "not ready (503)" in r["why"]


def test_serves_worse_afterwards(tmp_path: Path) -> None:
    with FakeServer("slow_after_bad_stop") as fake:
        code, report, _, _ = probe(
            fake.url, tmp_path, "--cases", "openai.mistyped_stop", "--case_timeout", "4"
        )
    assert code == 1
    r = result(report, "openai.mistyped_stop")
    assert r["status"] == "400" and kinds(r) == {"degraded"}
    assert "took" in r["why"]


def test_nonconformant_stream(tmp_path: Path) -> None:
    with FakeServer("no_done") as fake:
        code, report, _, _ = probe(fake.url, tmp_path, "--cases", "openai.completions_stream")
    assert code == 1
    r = result(report, "openai.completions_stream")
    assert kinds(r) == {"nonconformant"} and "[DONE]" in r["why"]


def test_dry_run_sends_no_case(tmp_path: Path) -> None:
    with FakeServer() as fake:
        code, report, out, _ = probe(fake.url, tmp_path, "--dry_run")
        assert fake.posts == 0
    assert code == 0 and report is None
    assert "openai.chat_unsupported" in out and "expect 4xx" in out
    assert "plan:" in out


def test_api_key_and_headers_are_sent_but_never_printed(tmp_path: Path) -> None:
    junit = tmp_path / "probe.xml"
    with FakeServer("500_bad_temperature") as fake:
        code, report, out, err = probe(
            fake.url,
            tmp_path,
            "--api_key",
            "sk-probe-SECRET-1",
            "-H",
            "X-Extra: hdr-SECRET-2",
            "--cases",
            "openai.negative_temperature",
            "--junit",
            str(junit),
            "-v",
        )
        assert "Bearer sk-probe-SECRET-1" in fake.header_values
        assert "hdr-SECRET-2" in fake.header_values
    assert code == 1  # a failure is reported, so every field of the report is filled
    written = out + err + json.dumps(report) + junit.read_text()
    assert "SECRET" not in written


@pytest.mark.parametrize(
    "args, message",
    [
        (["http://127.0.0.1:9"], "cannot reach"),
        (["ftp://127.0.0.1:9"], "URL must be"),
        (["{url}", "--model", "nope"], "model 'nope' not found"),
        (["{url}", "--protocol", "v2"], "found no model at"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    with FakeServer() as fake:
        code, report, out, err = probe(
            *[a.format(url=fake.url) for a in args][:1], tmp_path, *args[1:]
        )
        assert fake.posts == 0
    assert code == 2 and report is None
    assert message in err


@pytest.mark.parametrize(
    "flag",
    [
        ["--burst", "1000"],
        ["--case_timeout", "-1"],
        ["-H", "no colon"],
        ["--protocol", "grpc"],
        ["--bogus"],
    ],
)
def test_bad_flags_exit_2(tmp_path: Path, flag: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        probe("http://127.0.0.1:9", tmp_path, *flag)
    assert info.value.code == 2
