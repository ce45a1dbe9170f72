"""The probe's pure parts: verdicts from answers, shape checks, case selection, reports."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from steadyserve.probe import shapes
from steadyserve.probe.battery import BATTERY, select
from steadyserve.probe.cases import Expect, Kind
from steadyserve.probe.discovery import Found, Model
from steadyserve.probe.report import Progress, summary, table, write_junit
from steadyserve.probe.runner import Fault, Result, judge_answer
from steadyserve.probe.wire import Request, Response, Target

COMPLETION = {"choices": [{"index": 0, "text": "hi"}], "usage": {"completion_tokens": 1}}


def answer(status: int, body: object) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status=status, body=raw)


@pytest.mark.parametrize(
    "expect, status, body, fault",
    [
        (Expect.REJECT, 400, {"error": "bad"}, None),
        (Expect.REJECT, 422, {"detail": "bad"}, None),
        (Expect.REJECT, 200, COMPLETION, Fault.OK_FOR_FAILURE),
        (Expect.REJECT, 500, {"error": "boom"}, Fault.SERVER_ERROR),
        (Expect.REJECT, 503, {"error": "busy"}, Fault.SERVER_ERROR),
        (Expect.EITHER, 200, COMPLETION, None),
        (Expect.EITHER, 413, b"too large", None),
        (Expect.EITHER, 200, {"error": {"message": "x"}}, Fault.OK_FOR_FAILURE),
        (Expect.EITHER, 502, b"bad gateway", Fault.SERVER_ERROR),
        (Expect.OK, 200, COMPLETION, None),
        (Expect.OK, 200, {"choices": "no"}, Fault.NONCONFORMANT),
        (Expect.OK, 400, {"error": "no"}, Fault.NONCONFORMANT),
        (Expect.OK, 500, {"error": "no"}, Fault.NONCONFORMANT),
        (Expect.OK, 302, b"", Fault.NONCONFORMANT),
        (Expect.SERVE_OR_DECLINE, 200, COMPLETION, None),
        (Expect.SERVE_OR_DECLINE, 400, {"error": "cannot chat"}, None),
        (Expect.SERVE_OR_DECLINE, 501, {"error": "not implemented"}, None),
        (Expect.SERVE_OR_DECLINE, 500, {"error": "thread died"}, Fault.SERVER_ERROR),
        (Expect.SERVE_OR_DECLINE, 200, {"error": "dead"}, Fault.OK_FOR_FAILURE),
    ],
)
def test_judge_answer(expect: Expect, status: int, body: object, fault: Fault | None) -> None:
    faults, _ = judge_answer(expect, shapes.completion, answer(status, body))
    assert [f for f, _ in faults] == ([] if fault is None else [fault])


def test_declined_capability_says_why() -> None:
    _, note = judge_answer(
        Expect.SERVE_OR_DECLINE, shapes.chat, answer(400, {"error": {"message": "no template"}})
    )
    assert note == "declined: no template"


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (shapes.completion, COMPLETION, {"choices": [{"text": 5}]}),
        (
            shapes.chat,
            {"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
            {"choices": [{"message": {"role": "user", "content": "hi"}}]},
        ),
        (shapes.embeddings, {"data": [{"embedding": [0.1, 2]}]}, {"data": [{"embedding": ["a"]}]}),
        (shapes.models_list, {"data": [{"id": "m"}]}, {"data": []}),
        (shapes.v1_predict, {"predictions": [1]}, {"outputs": [1]}),
        (
            shapes.v2_infer,
            {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]},
            {"model_name": "m", "outputs": [{"name": "y", "shape": [1]}]},
        ),
        (shapes.v2_server_metadata, {"name": "s", "version": "1"}, {"name": "s"}),
        (shapes.v2_model_metadata, {"name": "m", "inputs": [], "outputs": []}, {"name": "m"}),
        (
            shapes.sse,
            'data: {"choices": []}\n\ndata: [DONE]\n\n',
            'data: {"choices": []}\n\n',
        ),
        (shapes.sse, "data: [DONE]\n\n", 'data: {"error": {"message": "died"}}\n\ndata: [DONE]\n'),
    ],
)
def test_shape_checks(check: shapes.Check, good: object, bad: object) -> None:
    assert check(good) is None
    assert isinstance(check(bad), str)


def test_quick_subset_and_patterns() -> None:
    quick = select(quick=True)
    assert all(c.quick or c.kind is Kind.CAPABILITY for c in quick)
    assert len(quick) < len(select(quick=False)) == len(BATTERY)
    only = select(quick=False, patterns=["v2.*shape"])
    names = {c.name for c in only if c.kind is not Kind.CAPABILITY}
    assert names == {"v2.wrong_shape", "v2.negative_shape", "v2.huge_shape"}
    assert len({c.name for c in BATTERY}) == len(BATTERY)  # names are unique


def test_every_built_request_is_bounded() -> None:
    found = Found(target=Target("http://127.0.0.1:1"))
    chat_model = Model(
        "m", {"openai", "v1", "v2"}, {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [-1]}]}
    )
    chat_model.caps = {
        "completions": True,
        "chat": True,
        "embeddings": False,
        "v1": True,
        "v2": True,
    }
    tensor_model = Model(
        "s",
        {"openai", "v1", "v2"},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]},
    )
    tensor_model.caps = {
        "completions": False,
        "chat": False,
        "embeddings": False,
        "v1": True,
        "v2": False,
    }
    built = 0
    for case in BATTERY:
        for model in (chat_model, tensor_model):
            if case.applies(model) is None and (req := case.build(model, found)) is not None:
                built += 1
                assert len(req.body) <= 41 * 1024 * 1024
    assert built >= len(BATTERY)


def _results() -> list[Result]:
    ok = Result("v2.live", "m", "v2", status="200", latency_s=0.002)
    bad = Result("openai.nan_temperature", "m", "openai", status="500", latency_s=0.01)
    bad.request = 'POST /v1/completions {"temperature": NaN, "prompt": "a\x00b"}'
    bad.add([(Fault.SERVER_ERROR, "500 for a request to reject or serve: boom")])
    skip = Result("openai.chat_unsupported", "m", "openai", verdict="skip", note="m serves chat")
    return [ok, bad, skip]


def test_table_and_summary() -> None:
    text = table(_results(), width=160)
    assert "openai.nan_temperature" in text and "v2.live" not in text  # failures only
    assert "5xx for a client error: 500" in text
    assert "v2.live" in table(_results(), width=160, verbose=True)
    assert table(_results()[:1]) == "no case failed"
    line = summary(_results(), 1.5)
    assert line.startswith("1 passed, 1 failed, 1 skipped in 1.5s")
    assert "5xx for a client error: 1" in line


def test_junit_is_valid_xml_even_with_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "probe.xml"
    found = Found(target=Target("http://127.0.0.1:1", (("Authorization", "Bearer SECRET"),)))
    write_junit(str(path), found, _results(), 2.0)
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='openai.nan_temperature']/failure")
    assert failure is not None and "NaN" in (failure.text or "")
    assert "SECRET" not in path.read_text()
    assert "SECRET" not in repr(found.target)


def test_progress_bar() -> None:
    stream = io.StringIO()
    bar = Progress(4, stream, enabled=True)
    for r in _results():
        bar.update(r)
    assert "3/4 failed 1" in stream.getvalue()
    silent = io.StringIO()
    Progress(4, silent).update(_results()[0])  # not a terminal: nothing
    assert silent.getvalue() == ""


def test_request_description_is_bounded() -> None:
    req = Request("POST", "/v1/completions", b"a" * 10_000)
    text = req.describe()
    assert len(text) < 300 and "10,000 bytes" in text
