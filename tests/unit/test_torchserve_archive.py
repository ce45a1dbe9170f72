"""TorchServe archives and config without a server: safe unpacking, MANIFEST.json and
model-config.yaml, archive specs (batching), config.properties."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from steadyserve.runtimes.torchserve.archive import ArchiveError, extract, open_archive
from steadyserve.runtimes.torchserve.config import load_ts_config, read_properties
from steadyserve.runtimes.torchserve.specs import archive_spec, scan_store
from steadyserve.settings import ConfigError

MANIFEST = {
    "runtime": "python",
    "model": {"modelName": "m", "handler": "h.py", "modelVersion": "3"},
}


def make_zip(path: Path, members: dict[str, bytes], manifest: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if manifest:
            zf.writestr("MAR-INF/MANIFEST.json", json.dumps(MANIFEST))
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_manifest_of_an_unpacked_zip(tmp_path: Path) -> None:
    mar = make_zip(tmp_path / "m.mar", {"h.py": b"def handle(d, c): return d\n"})
    model_dir, manifest = open_archive(str(mar), cache_root=str(tmp_path / "cache"))
    assert (manifest.model_name, manifest.model_version, manifest.handler) == ("m", "3", "h.py")
    assert Path(model_dir, "h.py").read_text().startswith("def handle")
    again, _ = open_archive(str(mar), cache_root=str(tmp_path / "cache"))
    assert again == model_dir  # unpacked once, by content hash


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.py", "leaves the archive"),
        ("a/../../evil.py", "leaves the archive"),
        ("/etc/evil.py", "absolute path"),
    ],
)
def test_path_traversal_is_refused(tmp_path: Path, member: str, why: str) -> None:
    mar = make_zip(tmp_path / "bad.mar", {member: b"x"})
    with pytest.raises(ArchiveError, match=why):
        open_archive(str(mar), cache_root=str(tmp_path / "cache"))
    assert not (tmp_path / "evil.py").exists()
    assert not any(p.name == "evil.py" for p in tmp_path.rglob("*"))


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    mar = tmp_path / "link.mar"
    with zipfile.ZipFile(mar, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(MANIFEST))
        info = zipfile.ZipInfo("escape")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        open_archive(str(mar), cache_root=str(tmp_path / "cache"))


def test_size_limit(tmp_path: Path) -> None:
    mar = make_zip(tmp_path / "big.mar", {"weights.bin": b"\0" * 100_000})
    with pytest.raises(ArchiveError, match="over the limit"):
        open_archive(str(mar), cache_root=str(tmp_path / "cache"), max_bytes=50_000)
    target = tmp_path / "t"
    target.mkdir()
    extract(str(mar), str(target), max_bytes=200_000)  # under the limit: fine
    assert (target / "weights.bin").stat().st_size == 100_000


def test_corrupt_foreign_and_missing(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mar"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(ArchiveError, match="not a zip file"):
        open_archive(str(junk), cache_root=str(tmp_path / "c"))
    foreign = make_zip(tmp_path / "foreign.mar", {"readme.txt": b"hi"}, manifest=False)
    with pytest.raises(ArchiveError, match="not a TorchServe archive"):
        open_archive(str(foreign), cache_root=str(tmp_path / "c"))
    with pytest.raises(ArchiveError, match="no such archive"):
        open_archive(str(tmp_path / "absent.mar"), cache_root=str(tmp_path / "c"))
    # nothing half-unpacked is left behind
    assert [p.name for p in (tmp_path / "c").iterdir()] == []


def test_bad_manifest(tmp_path: Path) -> None:
    mar = tmp_path / "nohandler.mar"
    with zipfile.ZipFile(mar, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "x"}}))
    with pytest.raises(ArchiveError, match="model.handler is missing"):
        open_archive(str(mar), cache_root=str(tmp_path / "c"))


def common() -> dict[str, object]:
    return {"max_batch_size": 32, "max_batch_wait_ms": 5.0, "device": "cpu"}


def test_archive_spec_batching_from_model_config(tmp_path: Path) -> None:
    mar = tmp_path / "cfg.mar"
    with zipfile.ZipFile(mar, "w") as zf:
        doc = {"model": {**MANIFEST["model"], "configFile": "model-config.yaml"}}
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(doc))
        zf.writestr("model-config.yaml", "batchSize: 4\nmaxBatchDelay: 20\nresponseTimeout: 7\n")
    spec = archive_spec(str(mar), common())
    assert (spec.max_batch_size, spec.max_batch_wait_ms) == (4, 20.0)
    assert spec.options["response_timeout_s"] == 7.0
    assert spec.options["version"] == "3" and spec.runtime == "custom"
    plain = archive_spec(str(make_zip(tmp_path / "plain.mar", {})), common())
    # TorchServe's defaults, not steadyserve's: a handler written for one request gets one
    assert (plain.max_batch_size, plain.max_batch_wait_ms) == (1, 100.0)


def test_config_properties(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    make_zip(store / "a.mar", {})
    make_zip(store / "b.mar", {})
    cfg_path = tmp_path / "config.properties"
    cfg_path.write_text(
        "# TorchServe config\n"
        "inference_address=http://127.0.0.1:8085\n"
        "management_address=http://127.0.0.1:8086\n"
        f"model_store={store}\n"
        "load_models=b.mar\n"
        "default_response_timeout=30\n"
        "number_of_netty_threads=4\n"
        "service_envelope=kserve\n"
        'models={"b": {"1.0": {"batchSize": 3, \\\n   "maxBatchDelay": 15}}}\n'
    )
    cfg = load_ts_config(str(cfg_path))
    assert cfg.settings == {
        "host": "127.0.0.1",
        "http_port": 8085,
        "model_repository": str(store),
        "request_timeout_s": 30,
    }
    assert cfg.load_models == ["b.mar"]
    assert any("number_of_netty_threads" in w for w in cfg.warnings)
    assert any(w.startswith("service_envelope") and "KServe V1/V2" in w for w in cfg.warnings)
    assert any("management_address" in w for w in cfg.warnings)
    specs = scan_store(str(store), common(), cfg.load_models, cfg.models)
    assert [(s.name, s.max_batch_size, s.max_batch_wait_ms) for s in specs] == [("b", 3, 15.0)]
    assert [s.name for s in scan_store(str(store), common())] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("default_response_timeout=soon", "default_response_timeout"),
        ("default_response_timeout=-1", "default_response_timeout"),
        ("inference_address=localhost", "inference_address"),
        ("models={not json", "models"),
        ('models={"m": {"1.0": {"batchSize": 0}}}', "models.m.1.0.batchSize"),
        ("max_request_size=big", "max_request_size"),
    ],
)
def test_config_properties_bad_value_names_the_key(tmp_path: Path, line: str, key: str) -> None:
    cfg_path = tmp_path / "config.properties"
    cfg_path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=f"invalid {key}="):
        load_ts_config(str(cfg_path))


def test_properties_syntax() -> None:
    props = read_properties("a=1\nb : 2\n! comment\nc 3\nd=x\\\n  y\n")
    assert props == {"a": "1", "b": "2", "c": "3", "d": "xy"}
