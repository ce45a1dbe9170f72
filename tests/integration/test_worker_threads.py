"""The worker's thread and OpenMP defaults (steadyserve/cpus.py) reach the model's process."""

from __future__ import annotations

from tests.helpers import FAULTY, ServerProcess


def _env(srv: ServerProcess, names: list[str]) -> list[str]:
    with srv.client() as client:
        r = client.post("/v1/models/m:predict", json={"instances": [f"env:{n}" for n in names]})
        assert r.status_code == 200, r.text
        return list(r.json()["predictions"])


def test_torch_threads_and_passive_wait_policy_in_the_worker() -> None:
    names = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"]
    server = ServerProcess("--model_class", FAULTY, "--model_name", "m", "--torch_threads", "1")
    for key in [k for k in server.env if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))]:
        del server.env[key]  # the defaults, not what this shell happens to set
    with server as srv:
        assert _env(srv, names) == ["1", "1", "PASSIVE", "1000"]
        # a good request still succeeds afterwards
        with srv.client() as client:
            r = client.post("/v1/models/m:predict", json={"instances": ["ok"]})
            assert r.status_code == 200 and r.json() == {"predictions": ["OK"]}
