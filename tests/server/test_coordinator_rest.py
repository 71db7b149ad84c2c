"""The operators' REST API over real HTTP on loopback, against the coordinator as a process."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from coordinator_helpers import ADMIN_KEY, CoordinatorProcess, create_run, make_adapter, run_config

from feddetox.adapters import from_bytes, sha256_bytes, to_bytes


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    process = CoordinatorProcess(tmp_path_factory.mktemp("rest-coordinator")).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def admin(coordinator):
    with coordinator.admin() as client:
        yield client


@pytest.fixture(scope="module")
def anon(coordinator):
    with httpx.Client(base_url=f"{coordinator.url}/api/v1", timeout=30) as client:
        yield client


def test_health_ready_openapi_docs_metrics(coordinator, anon):
    assert anon.get("/health").json() == {"status": "ok"}
    assert anon.get("/ready").json()["status"] == "ready"
    schema = anon.get("/openapi.json").json()
    assert schema["info"]["title"] == "FedDetox coordinator"
    for path in ("/api/v1/runs", "/api/v1/runs/{run_id}/start", "/api/v1/devices", "/api/v1/enrolment-tokens"):
        assert path in schema["paths"], path
    assert "swagger" in httpx.get(f"{coordinator.url}/docs").text.lower()
    assert "feddetox_updates_accepted_total" in httpx.get(f"{coordinator.url}/metrics").text


def test_mutations_need_the_admin_key(anon):
    for method, path in (("POST", "/runs"), ("POST", "/enrolment-tokens"), ("POST", "/runs/abc/start")):
        response = anon.request(method, path, json=run_config())
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "unauthenticated"
    wrong = anon.post("/runs", json=run_config(), headers={"X-Admin-Key": ADMIN_KEY + "x"})
    assert wrong.status_code == 401 and "X-Admin-Key" in wrong.json()["message"]
    assert anon.get("/runs").status_code == 200  # reading needs no key


def test_errors_are_json_and_name_the_field(admin):
    bad = admin.post("/runs", json=run_config(min_clients=9))
    assert (
        bad.status_code == 422 and bad.json()["error"] == "invalid_request" and "min_clients" in bad.json()["message"]
    )
    bad = admin.post("/runs", json=run_config(aggregation={"rule": "krum"}))
    assert bad.status_code == 422 and "aggregation.rule" in bad.json()["message"]
    malformed = admin.post("/runs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["error"] == "invalid_request"
    missing = admin.get("/runs/" + "0" * 32)
    assert missing.status_code == 404 and missing.json() == {
        "error": "not_found",
        "message": f"run {'0' * 32!r} does not exist",
    }
    assert admin.get("/runs/../../etc").status_code == 404
    huge = admin.post("/runs", content=b"x" * (5 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"

    def chunked():  # no Content-Length: the limit counts the bytes as they come
        for _ in range(5):
            yield b" " * (1024 * 1024)

    streamed = admin.post("/runs", content=chunked(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
    assert admin.get("/nothing-here").json()["error"] == "not_found"


def test_run_lifecycle_and_adapter_download(admin):
    created = admin.post("/runs", json=run_config(name="lifecycle"))
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert created.json()["status"] == "created" and created.json()["config"]["lora"]["r"] == 4
    conflict = admin.post(f"/runs/{run_id}/start")
    assert conflict.status_code == 409 and "adapter" in conflict.json()["message"]
    bad = admin.put(f"/runs/{run_id}/adapter", content=b"garbage")
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_data"
    adapter = make_adapter(3)
    put = admin.put(f"/runs/{run_id}/adapter", content=to_bytes(adapter))
    assert put.status_code == 200 and put.json()["sha256"] == sha256_bytes(to_bytes(adapter))
    assert admin.post(f"/runs/{run_id}/start").json()["status"] == "running"
    assert admin.post(f"/runs/{run_id}/start").status_code == 409
    assert admin.post(f"/runs/{run_id}/pause").json()["status"] == "paused"
    assert admin.post(f"/runs/{run_id}/resume").json()["status"] == "running"
    assert admin.delete(f"/runs/{run_id}").status_code == 409  # running
    zipped = admin.get(f"/runs/{run_id}/adapters/latest")
    assert zipped.status_code == 200 and zipped.headers["x-adapter-version"] == "0"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads(archive.read("adapter_config.json"))
        weights = from_bytes(archive.read("adapter_model.safetensors"))
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["target_modules"] == ["q_proj", "v_proj"]
    assert all(np.array_equal(weights[k], adapter[k]) for k in adapter)
    raw = admin.get(f"/runs/{run_id}/adapters/0/adapter_model.safetensors")
    assert raw.content == to_bytes(adapter)
    assert admin.get(f"/runs/{run_id}/adapters/0/adapter_config.json").json() == config
    assert admin.get(f"/runs/{run_id}/adapters/7").status_code == 404
    assert admin.get(f"/runs/{run_id}/adapters").json()["count"] == 1
    assert admin.post(f"/runs/{run_id}/stop").json()["status"] == "stopped"
    assert admin.delete(f"/runs/{run_id}").status_code == 204
    assert admin.get(f"/runs/{run_id}").status_code == 404


def test_tokens_devices_events_and_runs_list(coordinator, admin, anon):
    issued = admin.post("/enrolment-tokens", json={"note": "lab phone", "ttl_s": 600})
    assert issued.status_code == 201 and issued.json()["token"].startswith("fdt_")
    listed = admin.get("/enrolment-tokens").json()["data"]
    assert any(t["note"] == "lab phone" for t in listed)
    assert issued.json()["token"] not in json.dumps(listed)
    assert anon.get("/enrolment-tokens").status_code == 401
    assert admin.post("/enrolment-tokens", json={"ttl_s": -1}).status_code == 422
    assert admin.get("/devices").json() == {"data": [], "count": 0}
    run_id = create_run(admin, make_adapter(1), name="listed run")
    events = admin.get("/events", params={"run_id": run_id}).json()["data"]
    assert [e["kind"] for e in events][:3] == ["run_created", "adapter_set", "run_start"]
    assert any(r["name"] == "listed run" for r in anon.get("/runs").json()["data"])
    assert httpx.get(coordinator.url + "/").status_code == 200  # the dashboard's page
    rounds = admin.get(f"/runs/{run_id}/rounds").json()
    assert rounds["count"] <= 1  # round 1 waits for devices
    admin.post(f"/runs/{run_id}/stop")


def test_cli_token_create_run_and_wait(coordinator, admin, tmp_path, capsys):
    from feddetox.adapters import LoraSpec, save_peft
    from server import cli

    client = ["--url", coordinator.url, "--admin-key", ADMIN_KEY]
    assert cli.main(["token", *client, "--count", "2", "--note", "cli"]) == 0
    tokens = capsys.readouterr().out.split()
    assert len(tokens) == 2 and all(t.startswith("fdt_") for t in tokens)
    folder = save_peft(tmp_path / "adapter", make_adapter(5), LoraSpec(r=4, alpha=8), "tiny-test-model")
    config = tmp_path / "run.toml"
    config.write_text(
        '# feddetox coordinator create-run --config run.toml --adapter adapter/\n[run]\nname = "from-toml"\n'
        'base_model = "tiny-test-model"\nrounds = 1\nclients_per_round = 2\nmin_clients = 1\n'
        "[run.lora]\nr = 4\nalpha = 8\n"
    )
    assert cli.main(["create-run", *client, "--config", str(config), "--adapter", str(folder)]) == 0
    run_id = capsys.readouterr().out.strip()
    run = admin.get(f"/runs/{run_id}").json()
    assert run["name"] == "from-toml" and run["status"] == "running"
    assert cli.main(["wait", *client, "--run", run_id, "--timeout", "0", "--interval", "0"]) == 1  # no devices
    admin.post(f"/runs/{run_id}/stop")
    assert cli.main(["wait", *client, "--run", run_id, "--timeout", "5"]) == 1  # stopped before its rounds
    config.write_text('[run]\nname = "bad"\nbase_model = "m"\nrounds = 0\n')
    assert cli.main(["create-run", *client, "--config", str(config), "--adapter", str(folder)]) == 2
    assert "rounds" in capsys.readouterr().err
    assert cli.main(["token", "--url", coordinator.url, "--admin-key", "wrong-key-wrong-key"]) == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_serve_refuses_a_placeholder_admin_key(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "FEDDETOX_ADMIN_KEY": "changeme", "FEDDETOX_STATE_DIR": str(tmp_path)}
    env.pop("FEDDETOX_DEV_MODE", None)
    done = subprocess.run(
        [sys.executable, "-m", "feddetox_cli", "coordinator", "migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "FEDDETOX_ADMIN_KEY" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "feddetox_cli", "coordinator", "migrate", "--dev"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "database schema at revision" in done.stdout
