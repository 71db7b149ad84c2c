"""Migration 0003 on a database that already holds updates: each gets its acceptance number in its round, in
the order it was accepted (created_at, then id), and the running-sum columns of `rounds` are gone."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from server.db import Database, migrate
from server.db.migrate import alembic_config


def test_existing_updates_are_numbered_in_acceptance_order(db_url):
    db = Database(db_url)
    config = alembic_config(db_url)
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    with db.engine.begin() as conn:
        meta = sa.MetaData()
        meta.reflect(conn, only=["runs", "rounds", "devices", "assignments", "updates"])
        t = meta.tables
        run = {"id": "r", "name": "n", "status": "running", "config": {}, "rounds_closed": 0}
        conn.execute(t["runs"].insert(), run | {"created_at": 0.0, "updated_at": 0.0})
        base = {"run_id": "r", "status": "collecting", "base_version": 0, "opened_at": 0.0, "selected": 3}
        counts = {"reported": 3, "quorum": 1, "extensions": 0, "partial_weight": 0.0, "partial_count": 0}
        conn.execute(t["rounds"].insert(), [base | counts | {"id": i, "index": i} for i in (1, 2)])
        device = {"name": "d", "platform": "", "client_version": "", "secret_hash": "x", "status": "idle"}
        conn.execute(
            t["devices"].insert(),
            [device | {"id": f"d{i}", "created_at": 0.0, "last_seen_at": 0.0} for i in range(5)],
        )
        updates = []
        # (update id, round, accepted at): inserted out of order; ids break the tie at t = 5
        for uid, round_id, at in [("u3", 1, 7.0), ("u1", 1, 5.0), ("u2", 2, 1.0), ("u0", 1, 5.0), ("u4", 2, 9.0)]:
            device_id = f"d{uid[1]}"
            conn.execute(
                t["assignments"].insert(),
                {
                    "id": f"a-{uid}",
                    "run_id": "r",
                    "round_id": round_id,
                    "round_index": round_id,
                    "device_id": device_id,
                    "status": "reported",
                    "created_at": 0.0,
                },
            )
            updates.append(
                {
                    "id": uid,
                    "run_id": "r",
                    "round_id": round_id,
                    "round_index": round_id,
                    "device_id": device_id,
                    "assignment_id": f"a-{uid}",
                    "idempotency_key": uid,
                    "sha256": "0" * 64,
                    "size_bytes": 1,
                    "num_examples": 1,
                    "base_version": 0,
                    "delta_norm": 0.0,
                    "clipped": False,
                    "metrics": {},
                    "sanitization": {},
                    "created_at": at,
                }
            )
        conn.execute(t["updates"].insert(), updates)
    migrate(db)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT round_id, seq, id FROM updates ORDER BY round_id, seq")).all()
        columns = {c["name"] for c in sa.inspect(conn).get_columns("rounds")}
    assert [tuple(r) for r in rows] == [(1, 1, "u0"), (1, 2, "u1"), (1, 3, "u3"), (2, 1, "u2"), (2, 2, "u4")]
    assert not {"partial_sha256", "partial_weight", "partial_count"} & columns
    db.dispose()
