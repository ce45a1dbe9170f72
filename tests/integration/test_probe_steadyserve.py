"""``steadyserve probe`` against a real steadyserve server: it passes the full battery with a
decoder-only model that chats (Llama), an encoder-decoder that cannot chat (T5) and a custom
tensor model, behind an API key that is never printed. One server, one run (2 shared cores)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLE, ServerProcess, make_repository, run_cli

KEY = "sk-steadyserve-probe-SECRET"


def _by_case(report: dict[str, Any], model: str) -> dict[str, dict[str, Any]]:
    return {r["case"]: r for r in report["results"] if r["model"] == model}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_steadyserve_passes_the_full_battery(
    tmp_path: Path, tiny_llama_dir: str, tiny_t5_dir: str
) -> None:
    repo = make_repository(tmp_path / "repo", scaler=EXAMPLE)
    shutil.copytree(tiny_llama_dir, repo / "llama")
    shutil.copytree(tiny_t5_dir, repo / "t5")
    report_file, junit_file = tmp_path / "probe.json", tmp_path / "probe.xml"
    # A small queue, so that the burst goes beyond it (429s are the right answer).
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--max_queue_size",
        "4",
        env={"STEADYSERVE_API_KEY": KEY},
        ready_timeout=180,
    ) as server:
        without_key = run_cli("probe", server.url, "--quick")
        proc = run_cli(
            "probe",
            server.url,
            "--burst",
            "12",
            "--case_timeout",
            "30",  # a loaded CI machine: slow is not hung
            "--json",
            str(report_file),
            "--junit",
            str(junit_file),
            env={"STEADYSERVE_PROBE_API_KEY": KEY},
            timeout=800,
        )
        logs = server.logs()
    assert without_key.returncode == 2 and "API key" in without_key.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs[-3000:]
    written = proc.stdout + proc.stderr + report_file.read_text() + junit_file.read_text()
    assert "SECRET" not in written and "SECRET" not in logs

    report = json.loads(report_file.read_text())
    assert {m["name"] for m in report["models"]} == {"llama", "t5", "scaler"}
    caps = {m["name"]: m["capabilities"] for m in report["models"]}
    assert caps["llama"]["chat"] and caps["llama"]["completions"]
    assert caps["t5"] == {
        "completions": True,
        "chat": False,
        "embeddings": False,
        "v2": True,
        "v1": True,
    }
    assert not caps["scaler"]["completions"] and caps["scaler"]["v2"] and caps["scaler"]["v1"]

    t5 = _by_case(report, "t5")
    # The KServe failure: chat on T5. A 400, and the server serves on.
    chat = t5["openai.chat_unsupported"]
    assert (chat["status"], chat["verdict"]) == ("400", "pass")
    assert "429" in t5["openai.burst"]["status"]  # beyond the queue: shed, not failed
    scaler = _by_case(report, "scaler")
    assert scaler["v2.wrong_shape"]["status"] == "400"
    assert scaler["v2.burst"]["verdict"] == "pass"
    llama = _by_case(report, "llama")
    assert llama["openai.stream_disconnect"]["verdict"] == "pass"
    assert llama["openai.stream_never_read"]["verdict"] == "pass"
    assert sum(r["verdict"] == "pass" for r in report["results"]) > 120
    suite = ET.parse(junit_file).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
