"""The service layer on a real database, SQLite and PostgreSQL alike; time moves by a test clock.

Devices here are calls of the service functions (the gRPC adapter is tested in test_coordinator_grpc.py).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from coordinator_helpers import make_adapter, numpy_fedavg, run_config
from sqlalchemy import func, select

from feddetox.adapters import from_bytes, sha256_bytes, to_bytes
from feddetox.errors import AuthError, ConfigError, ConflictError, DataError, NotFoundError, UpdateRejected
from server.db.models import AdapterVersion, Device, EnrolmentToken, Event, Update
from server.service import devices, rounds, runs, updates
from server.service.config import parse_run_config


def enrol_devices(ctx, n: int) -> list[str]:
    return [devices.enrol(ctx, devices.issue_token(ctx).token, f"dev-{i}").device_id for i in range(n)]


def start_run(ctx, **overrides) -> str:
    run = runs.create_run(ctx, run_config(**overrides))
    runs.set_start_adapter(ctx, run["id"], to_bytes(make_adapter(0)))
    runs.start_run(ctx, run["id"])
    return run["id"]


def upload(ctx, device_id: str, task, blob: bytes, *, key: str | None = None, n: int = 10, **header):
    fields = dict(
        idempotency_key=key or f"{device_id}-{task.round_index}",
        run_id=task.run_id,
        round_index=task.round_index,
        assignment_id=task.assignment_id,
        num_examples=n,
        size_bytes=len(blob),
        sha256=sha256_bytes(blob),
        base_adapter_version=task.global_adapter.version,
        metrics={"dpo_loss": 0.5},
        sanitization=updates.Sanitization(pairs_seen=n, flagged=2, replaced=2, score_histogram=(1,) * 10),
    )
    fields.update(header)
    return updates.receive_update(ctx, device_id, updates.UpdateHeader(**fields), [blob[:100], blob[100:]])


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"aggregation\.trim_ratio"):
        parse_run_config(run_config(aggregation={"rule": "trimmed_mean", "trim_ratio": 0.7}))
    with pytest.raises(ConfigError, match="min_clients"):
        parse_run_config(run_config(min_clients=5, clients_per_round=3))
    with pytest.raises(ConfigError, match=r"lora\.rr"):
        parse_run_config(run_config(lora={"rr": 4}))
    with pytest.raises(ConfigError, match="sanitization_policy"):
        parse_run_config(run_config(sanitization_policy="maybe"))
    with pytest.raises(ConfigError, match="name"):
        parse_run_config(run_config(name="../etc/passwd"))
    cfg = parse_run_config(run_config())
    assert parse_run_config(cfg.to_dict()) == cfg


def test_run_lifecycle(make_ctx):
    ctx = make_ctx()
    run = runs.create_run(ctx, run_config())
    with pytest.raises(ConflictError, match="no starting adapter"):
        runs.start_run(ctx, run["id"])
    bad = make_adapter(0)
    bad["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = np.zeros((3, 16), np.float32)
    with pytest.raises(ConfigError, match="rank"):
        runs.set_start_adapter(ctx, run["id"], to_bytes(bad))
    with pytest.raises(DataError):
        runs.set_start_adapter(ctx, run["id"], b"not safetensors")
    ref = runs.set_start_adapter(ctx, run["id"], to_bytes(make_adapter(0)))
    assert ref.version == 0 and ctx.blobs.get(ref.sha256) == to_bytes(make_adapter(0))
    assert runs.start_run(ctx, run["id"])["status"] == "running"
    with pytest.raises(ConflictError):
        runs.set_start_adapter(ctx, run["id"], to_bytes(make_adapter(1)))
    with pytest.raises(ConflictError):
        runs.resume_run(ctx, run["id"])
    assert runs.pause_run(ctx, run["id"])["status"] == "paused"
    assert runs.resume_run(ctx, run["id"])["status"] == "running"
    assert runs.stop_run(ctx, run["id"])["status"] == "stopped"
    with pytest.raises(ConflictError):
        runs.start_run(ctx, run["id"])
    with pytest.raises(NotFoundError):
        runs.get_run(ctx, "0" * 32)
    runs.delete_run(ctx, run["id"])
    assert runs.list_runs(ctx)[1] == 0


def test_enrolment_token_is_used_once_and_secrets_are_hashed(make_ctx, clock):
    ctx = make_ctx()
    issued = devices.issue_token(ctx, ttl_s=60)
    enrolled = devices.enrol(ctx, issued.token, "phone-1")
    assert devices.authenticate(ctx, enrolled.device_id, enrolled.device_secret) == enrolled.device_id
    with pytest.raises(AuthError, match="used already"):
        devices.enrol(ctx, issued.token, "phone-2")
    with pytest.raises(AuthError, match="wrong secret"):
        devices.authenticate(ctx, enrolled.device_id, enrolled.device_secret + "x")
    with pytest.raises(AuthError, match="unknown"):
        devices.enrol(ctx, "fdt_nonsense", "phone-3")
    late = devices.issue_token(ctx, ttl_s=60)
    clock.advance(61)
    with pytest.raises(AuthError, match="expired"):
        devices.enrol(ctx, late.token, "phone-4")
    with ctx.db.read() as session:
        stored = (
            session.scalars(select(Device.secret_hash)).all() + session.scalars(select(EnrolmentToken.token_hash)).all()
        )
    assert enrolled.device_secret not in stored and issued.token not in stored


def test_two_rounds_of_fedavg(make_ctx):
    ctx = make_ctx()
    device_ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx)
    assert rounds.advance_all(ctx) == ["round_opened", "round_selected"]
    version = 0
    for round_index in (1, 2):
        sent, weights = [], []
        for i, device_id in enumerate(device_ids):
            task = devices.get_task(ctx, device_id)
            assert (task.round_index, task.global_adapter.version) == (round_index, version)
            adapter = make_adapter(100 * round_index + i)
            receipt = upload(ctx, device_id, task, to_bytes(adapter), n=5 + i)
            assert not receipt.duplicate
            sent.append(adapter)
            weights.append(5 + i)
        steps = rounds.advance_all(ctx)
        assert steps[0] == "round_closed"
        version += 1
        ref = runs.adapter_ref(ctx, run_id, version)
        got = from_bytes(ctx.blobs.get(ref.sha256))
        expected = numpy_fedavg(sent, weights)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7)
        detail = rounds.get_round(ctx, run_id, round_index)
        assert detail["status"] == "closed" and detail["metrics"]["updates"] == 3
        assert detail["metrics"]["sanitization"]["replaced"] == 6
        assert detail["metrics"]["metrics"]["dpo_loss"] == pytest.approx(0.5)
    assert runs.get_run(ctx, run_id)["status"] == "completed"
    assert devices.get_task(ctx, device_ids[0]) is None


def test_every_refusal_has_its_reason_and_stores_nothing(make_ctx):
    ctx = make_ctx()
    a, b, c = enrol_devices(ctx, 3)
    run_id = start_run(ctx, max_update_norm=5.0)
    rounds.advance_all(ctx)
    task = devices.get_task(ctx, a)
    good = to_bytes(make_adapter(1))

    def refused(reason, device=a, blob=good, **header):
        with pytest.raises(UpdateRejected) as info:
            upload(ctx, device, task, blob, key=f"k-{reason}", **header)
        assert info.value.reason == reason, info.value
        return info.value

    wrong_keys = make_adapter(1)
    wrong_keys["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = np.zeros((4, 16), np.float32)
    wrong_shape = {k: np.zeros((v.shape[0], v.shape[1] + 1), np.float32) for k, v in make_adapter(1).items()}
    float64 = {k: v.astype(np.float64) for k, v in make_adapter(1).items()}
    nan = make_adapter(1)
    next(iter(nan.values()))[0, 0] = np.nan
    far = {k: v * 1000 for k, v in make_adapter(1).items()}
    refused("bad_header", n=0)
    refused("too_large", size_bytes=ctx.settings.max_update_bytes + 1)
    refused("unknown_run", run_id="f" * 32)
    refused("not_assigned", device=b)  # b's credentials with a's assignment
    refused("stale_base", base_adapter_version=7)
    refused("size_mismatch", size_bytes=len(good) - 1)
    refused("checksum_mismatch", sha256="0" * 64)
    refused("malformed", blob=b"x" * 200)
    refused("keys", blob=to_bytes(wrong_keys))
    refused("shape", blob=to_bytes(wrong_shape))
    refused("dtype", blob=to_bytes(float64))
    refused("non_finite", blob=to_bytes(nan))
    refused("norm", blob=to_bytes(far))
    with ctx.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Update)) == 0
        logged = session.scalar(select(func.count()).select_from(Event).where(Event.kind == "update_refused"))
    assert logged == 13
    stored_blobs = [p for p in ctx.blobs.root.rglob("*") if p.is_file()]
    assert stored_blobs == [ctx.blobs.path(runs.adapter_ref(ctx, run_id, 0).sha256)]  # the starting adapter only
    first = upload(ctx, a, task, good, key="once")
    again = upload(ctx, a, task, good, key="once")
    assert again.duplicate and again.update_id == first.update_id
    refused("already_reported", blob=to_bytes(make_adapter(2)))
    with pytest.raises(UpdateRejected) as info:
        upload(ctx, a, task, to_bytes(make_adapter(3)), key="once")
    assert info.value.reason == "idempotency_conflict"
    assert devices.get_device(ctx, a)["refusals_by_reason"]["norm"] == 1
    runs.pause_run(ctx, run_id)
    task_c = devices.get_task(ctx, c)
    assert task_c is None  # a paused run hands out no task


def test_deadline_with_quorum_closes_and_stragglers_are_refused(make_ctx, clock):
    ctx = make_ctx()
    ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx, round_deadline_s=60, rounds=1)
    rounds.advance_all(ctx)
    tasks = {d: devices.get_task(ctx, d) for d in ids}
    for d in ids[:2]:
        upload(ctx, d, tasks[d], to_bytes(make_adapter(hash(d) % 1000)))
    assert rounds.advance_all(ctx) == []  # not all reported, deadline not reached
    clock.advance(61)
    with pytest.raises(UpdateRejected) as info:
        upload(ctx, ids[2], tasks[ids[2]], to_bytes(make_adapter(5)))
    assert info.value.reason == "round_closed"
    assert rounds.advance_all(ctx)[:2] == ["round_closed", "run_completed"]
    detail = rounds.get_round(ctx, run_id, 1)
    assert [a["status"] for a in detail["assignments"]].count("missed") == 1
    with pytest.raises(UpdateRejected) as info:
        upload(ctx, ids[2], tasks[ids[2]], to_bytes(make_adapter(5)))
    assert info.value.reason in ("round_closed", "run_not_running")


@pytest.mark.parametrize("policy", ["fail", "extend"])
def test_no_quorum_fails_or_extends(make_ctx, clock, policy):
    ctx = make_ctx()
    ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx, round_deadline_s=60, rounds=1, on_no_quorum=policy, max_extensions=1)
    rounds.advance_all(ctx)
    tasks = {d: devices.get_task(ctx, d) for d in ids}
    upload(ctx, ids[0], tasks[ids[0]], to_bytes(make_adapter(1)))
    clock.advance(61)
    steps = rounds.advance_all(ctx)
    if policy == "fail":
        assert steps == ["round_failed"]
        assert runs.get_run(ctx, run_id)["status"] == "failed"
        assert "quorum 2" in rounds.get_round(ctx, run_id, 1)["failure"]
        return
    assert steps == ["round_extended"]
    upload(ctx, ids[1], tasks[ids[1]], to_bytes(make_adapter(2)))  # accepted within the extension
    clock.advance(61)
    assert rounds.advance_all(ctx)[0] == "round_closed"
    assert rounds.get_round(ctx, run_id, 1)["extensions"] == 1


def test_selection_is_seeded_and_needs_recent_devices(make_ctx, clock):
    ctx = make_ctx()
    ids = enrol_devices(ctx, 5)
    chosen = rounds.select_devices(ids, 3, seed=1, run_id="r", round_index=1)
    assert chosen == rounds.select_devices(list(reversed(ids)), 3, seed=1, run_id="r", round_index=1)
    assert len(set(chosen)) == 3 and set(chosen) <= set(ids)
    picks = {tuple(rounds.select_devices(ids, 3, seed=s, run_id="r", round_index=1)) for s in range(20)}
    assert len(picks) > 1
    clock.advance(1000)  # every device is now unseen for longer than the window (300 s)
    devices.heartbeat(ctx, ids[0])
    run_id = start_run(ctx, device_seen_window_s=300, round_deadline_s=60)
    assert rounds.advance_all(ctx) == ["round_opened"]  # one device seen: fewer than min_clients, waits
    devices.heartbeat(ctx, ids[1])
    assert rounds.advance_all(ctx) == []  # two seen: min_clients, but it waits one deadline for three
    clock.advance(61)
    devices.heartbeat(ctx, ids[0])
    devices.heartbeat(ctx, ids[1])
    assert rounds.advance_all(ctx) == ["round_selected"]
    assert {a["device_id"] for a in rounds.get_round(ctx, run_id, 1)["assignments"]} == set(ids[:2])


def test_two_coordinators_never_aggregate_a_round_twice(make_ctx):
    first, second = make_ctx(), make_ctx()  # two service contexts (two engines) on one database
    ids = enrol_devices(first, 3)
    run_id = start_run(first, rounds=3)
    rounds.advance_all(first)
    errors = []

    def tick(ctx):
        try:
            for _ in range(5):
                rounds.advance_all(ctx)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    for _ in range(3):
        for i, d in enumerate(ids):
            task = devices.get_task(first, d)
            upload(second if i % 2 else first, d, task, to_bytes(make_adapter(i + 10 * task.round_index)))
        threads = [threading.Thread(target=tick, args=(c,)) for c in (first, second, first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    with first.db.read() as session:
        closed = session.scalars(select(Event.round_index).where(Event.kind == "round_closed")).all()
        versions = session.scalars(select(AdapterVersion.version).where(AdapterVersion.run_id == run_id)).all()
    assert sorted(closed) == [1, 2, 3]
    assert sorted(versions) == [0, 1, 2, 3]
    assert runs.get_run(second, run_id)["status"] == "completed"


def test_a_new_context_resumes_from_the_database(make_ctx):
    ctx = make_ctx()
    ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx, rounds=1)
    rounds.advance_all(ctx)
    sent = []
    for i, d in enumerate(ids[:2]):
        sent.append(make_adapter(i))
        upload(ctx, d, devices.get_task(ctx, d), to_bytes(sent[-1]))
    ctx.db.dispose()
    restarted = make_ctx()  # nothing carried over but the database and the blob folder
    sent.append(make_adapter(2))
    upload(restarted, ids[2], devices.get_task(restarted, ids[2]), to_bytes(sent[-1]))
    assert rounds.advance_all(restarted)[0] == "round_closed"
    got = from_bytes(restarted.blobs.get(runs.adapter_ref(restarted, run_id).sha256))
    for key, value in numpy_fedavg(sent, [10, 10, 10]).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["fedavg", "median", "trimmed_mean", "lora_exact"])
def test_clipped_aggregation_equals_the_reference(make_ctx, rule):
    from server import aggregation

    ctx = make_ctx()
    ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx, rounds=1, aggregation={"rule": rule, "clip_norm": 1.0, "trim_ratio": 0.34})
    rounds.advance_all(ctx)
    base = make_adapter(0)
    sent = [{k: base[k] + make_adapter(50 + i, scale=0.2 * (i + 1))[k] for k in base} for i in range(3)]
    for i, d in enumerate(ids):
        upload(ctx, d, devices.get_task(ctx, d), to_bytes(sent[i]), n=i + 1)
    if rule == "fedavg":  # the running sum of FedAvg: in memory, covering the three updates
        ctx.sums.wait()
        assert ctx.sums.count(1) == 3
    assert rounds.advance_all(ctx)[0] == "round_closed"
    got = from_bytes(ctx.blobs.get(runs.adapter_ref(ctx, run_id).sha256))
    clipped = [aggregation.clip_update(s, base, 1.0)[0] for s in sent]
    expected = {
        "fedavg": lambda: numpy_fedavg(clipped, [1, 2, 3]),
        "median": lambda: {k: np.median(np.stack([c[k] for c in clipped]), axis=0) for k in base},
        "trimmed_mean": lambda: {k: np.sort(np.stack([c[k] for c in clipped]), axis=0)[1] for k in base},
        "lora_exact": lambda: aggregation.lora_exact(clipped, [1, 2, 3]),
    }[rule]()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)
    summary = rounds.get_round(ctx, run_id, 1)["metrics"]["aggregation"]
    assert summary["clipped"] == 3 and summary["updates"] == 3 and summary["rule"] == rule
    assert ctx.sums.count(1) is None  # forgotten once the round closed


def test_rate_limit_per_device(clock):
    from feddetox.errors import RateLimitedError
    from server.service.limits import RateLimiter

    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimitedError, match="retry after 0.50 s"):
        limiter.check("a")
    limiter.check("b")  # another device has its own bucket
    clock.advance(0.5)
    limiter.check("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")
    RateLimiter(rate=0, burst=1).check("a")  # 0: no limit


def test_pause_freezes_the_round_and_resume_gives_its_time_back(make_ctx, clock):
    ctx = make_ctx()
    ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx, round_deadline_s=60, rounds=1)
    rounds.advance_all(ctx)
    task = devices.get_task(ctx, ids[0])
    deadline = rounds.get_round(ctx, run_id, 1)["deadline_at"]
    runs.pause_run(ctx, run_id)
    with pytest.raises(UpdateRejected) as info:
        upload(ctx, ids[0], task, to_bytes(make_adapter(1)))
    assert info.value.reason == "run_not_running"
    clock.advance(500)  # far past the deadline, but paused
    assert rounds.advance_all(ctx) == []
    runs.resume_run(ctx, run_id)
    assert rounds.get_round(ctx, run_id, 1)["deadline_at"] == pytest.approx(deadline + 500)
    upload(ctx, ids[0], task, to_bytes(make_adapter(1)))  # accepted: the round got its time back
    runs.stop_run(ctx, run_id)
    detail = rounds.get_round(ctx, run_id, 1)
    assert detail["status"] == "cancelled"
    assert sorted(a["status"] for a in detail["assignments"]) == ["cancelled", "cancelled", "reported"]


@pytest.mark.postgres
def test_a_locked_run_does_not_block_inserts_that_reference_it(postgres_cluster, tmp_path):
    """The scheduler holds a run's row lock while an upload inserts a row whose foreign key names that run;
    the insert must not wait for it (with FOR UPDATE it did, and the two deadlocked)."""
    from sqlalchemy import text

    from server.db import Database, migrate
    from server.db.models import Metric, Run

    db = Database(postgres_cluster.new_database())
    migrate(db)
    with db.write() as session:
        session.add(Run(id="r" * 32, name="n", status="running", config={}, created_at=0.0, updated_at=0.0))
        session.add(Device(id="d" * 32, name="d", secret_hash="x", created_at=0.0, last_seen_at=0.0))
    with db.write() as scheduler:
        scheduler.execute(db.locked(select(Run).where(Run.id == "r" * 32))).scalar_one()
        with db.write() as upload:
            upload.execute(text("SET LOCAL lock_timeout = '20s'"))  # a bound on failure only
            upload.add(
                Metric(
                    run_id="r" * 32,
                    round_index=1,
                    device_id="d" * 32,
                    assignment_id="a",
                    metrics={},
                    sanitization={},
                    created_at=0.0,
                )
            )
            upload.flush()  # returns at once: FOR NO KEY UPDATE does not conflict with the FK's KEY SHARE
    db.dispose()
