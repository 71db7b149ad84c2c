"""The running FedAvg sum in memory: caught up between two service contexts on one database, rebuilt from the
blobs when it is lost, and always the same bits as the numpy reference's inputs summed in acceptance order."""

from __future__ import annotations

import numpy as np
from coordinator_helpers import make_adapter, numpy_fedavg
from sqlalchemy import select
from test_coordinator_service import enrol_devices, start_run, upload

from feddetox.adapters import from_bytes, to_bytes
from server import aggregation
from server.db.models import Update
from server.service import devices, rounds, runs
from server.service.running_sums import INLINE_CATCH_UP


def _updates(n: int) -> list[dict[str, np.ndarray]]:
    base = make_adapter(0)
    return [{k: base[k] + make_adapter(70 + i, scale=0.1 * (1 + i % 3))[k] for k in base} for i in range(n)]


def _reference(sent, weights, clip_norm):
    base = make_adapter(0)
    clipped = [aggregation.clip_update(s, base, clip_norm)[0] for s in sent]
    return numpy_fedavg(clipped, weights)


def test_catch_up_between_two_contexts_on_one_database(make_ctx):
    first, second = make_ctx(), make_ctx()  # two coordinators: each its own engine and its own memory
    n = INLINE_CATCH_UP + 4
    ids = enrol_devices(first, n)
    run_id = start_run(first, rounds=1, clients_per_round=n, min_clients=n, aggregation={"clip_norm": 0.8})
    rounds.advance_all(first)
    sent, weights = _updates(n), [3 + i for i in range(n)]

    def accept(ctx, i):
        upload(ctx, ids[i], devices.get_task(ctx, ids[i]), to_bytes(sent[i]), n=weights[i])
        ctx.sums.wait()  # the add runs on the sums' worker thread, after the reply

    accept(first, 0)
    round_id = 1
    assert (first.sums.count(round_id), second.sums.count(round_id)) == (1, None)
    accept(second, 1)  # the second has no sum: it reads update 1 from its blob, then adds its own
    assert second.sums.count(round_id) == 2
    accept(first, 2)  # the first is one behind: it reads update 2, then adds its own
    assert first.sums.count(round_id) == 3
    for i in range(3, n - 1):
        accept(first, i)
    # the second is now more than INLINE_CATCH_UP behind: its request path leaves the reading to the scheduler
    accept(second, n - 1)
    assert second.sums.count(round_id) == 2
    rounds.catch_up_sums(second)  # what its scheduler does each tick, off the request path
    assert second.sums.count(round_id) == n
    held = second.sums._sums[round_id].acc.result()
    with first.db.read() as session:
        seqs = session.scalars(select(Update.seq).where(Update.round_id == round_id).order_by(Update.seq)).all()
    assert seqs == list(range(1, n + 1))
    assert rounds.advance_all(first)[0] == "round_closed"  # the first catches up the last one in the close
    got = from_bytes(first.blobs.get(runs.adapter_ref(first, run_id).sha256))
    for key, value in _reference(sent, weights, 0.8).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(got[key], held[key])  # same order of additions: the same bits
    assert first.sums.count(round_id) is None  # forgotten after the close


def test_a_lost_sum_is_rebuilt_from_the_blobs_at_close(make_ctx):
    ctx = make_ctx()
    ids = enrol_devices(ctx, 3)
    run_id = start_run(ctx, rounds=1, aggregation={"clip_norm": 0.8})
    rounds.advance_all(ctx)
    sent, weights = _updates(3), [2, 5, 7]
    for i, d in enumerate(ids):
        upload(ctx, d, devices.get_task(ctx, d), to_bytes(sent[i]), n=weights[i])
    ctx.sums.wait()
    kept = ctx.sums._sums[1].acc.result()
    ctx.sums.forget(1)  # as after a restart: nothing in memory
    assert rounds.advance(ctx, run_id) == "round_closed"
    got = from_bytes(ctx.blobs.get(runs.adapter_ref(ctx, run_id).sha256))
    for key, value in _reference(sent, weights, 0.8).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(got[key], kept[key])
