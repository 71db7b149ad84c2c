"""The dashboard's router against a real coordinator process: the page and its files, and the evaluation
endpoints (admin key, validation, round 0 and closed rounds only, newest wins, audit log)."""

from __future__ import annotations

import re

import httpx
import pytest

from server.dashboard.routes import FILES

pytestmark = pytest.mark.slow


def test_page_and_files_are_served_with_their_types_and_a_strict_policy(coordinator):
    page = httpx.get(coordinator.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    # every file the page names is served from this origin, with its type
    named = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/dashboard.css"} <= set(named)
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in named:
        response = httpx.get(coordinator.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(types[path[path.rindex(".") :]]), path
    # module imports stay inside /static
    for name, (data, _, _) in FILES.items():
        if name.endswith(".js"):
            for target in re.findall(r'from "([^"]+)"', data.decode()):
                assert target.startswith("./") and target[2:] in FILES, (name, target)


def test_no_code_or_asset_comes_from_elsewhere():
    """Works offline: no CDN, no remote font, no remote script, style or image in any file of the page."""
    for name, (data, _, _) in FILES.items():
        text = data.decode()
        urls = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text)
        assert all(u.startswith("http://www.w3.org/") for u in urls), (name, urls)  # the SVG namespace only


def test_unknown_or_escaping_static_paths_are_not_found(coordinator):
    for path in ("/static/nope.js", "/static/..%2Froutes.py", "/static/__init__.py", "/static/%2e%2e/evaluation.py"):
        response = httpx.get(coordinator.url + path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"


def test_an_unchanged_file_answers_304(coordinator):
    first = httpx.get(coordinator.url + "/static/app.js")
    again = httpx.get(coordinator.url + "/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_evaluation_needs_the_admin_key(coordinator, runs):
    run_id = runs.start(evaluated=False)
    body = {"metrics": {"asr_refusal": 0.5}}
    for headers in ({}, {"X-Admin-Key": "wrong-key-wrong-key-wrong"}):
        response = httpx.post(f"{coordinator.url}/api/v1/runs/{run_id}/rounds/0/evaluation", json=body, headers=headers)
        assert response.status_code == 401 and "X-Admin-Key" in response.json()["message"]
    assert httpx.get(f"{coordinator.url}/api/v1/runs/{run_id}/evaluations").json()["count"] == 0


@pytest.mark.parametrize(
    ("metrics", "named"),
    [
        ({}, "metrics"),
        ({"asr refusal": 0.1}, "metrics.asr refusal"),
        ({"asr_refusal": "high"}, "metrics.asr_refusal"),
        ({"asr_refusal": True}, "metrics.asr_refusal"),
        ({"asr_refusal": None}, "metrics.asr_refusal"),
    ],
)
def test_bad_metrics_are_refused_naming_the_field(fleet, runs, metrics, named):
    run_id = runs.start(evaluated=False)
    response = fleet.admin.post(f"/runs/{run_id}/rounds/0/evaluation", json={"metrics": metrics})
    assert response.status_code == 422
    assert response.json()["message"].startswith(named)


def test_non_finite_values_are_refused(fleet, runs):
    run_id = runs.start(evaluated=False)
    body = b'{"metrics": {"asr_refusal": NaN}}'
    response = fleet.admin.post(
        f"/runs/{run_id}/rounds/0/evaluation", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_evaluation_of_unknown_runs_rounds_and_open_rounds(fleet, runs):
    body = {"metrics": {"asr_refusal": 0.5}}
    assert fleet.admin.post("/runs/" + "ab" * 16 + "/rounds/0/evaluation", json=body).status_code == 404
    run_id = runs.start(rounds=3)
    assert fleet.admin.post(f"/runs/{run_id}/rounds/7/evaluation", json=body).status_code == 404
    fleet.wait_round(run_id, 1, "collecting")
    response = fleet.admin.post(f"/runs/{run_id}/rounds/1/evaluation", json=body)
    assert response.status_code == 409 and "collecting" in response.json()["message"]


def test_evaluations_newest_per_round_and_in_the_audit_log(fleet, runs):
    run_id = runs.start(played=1, rounds=3)  # evaluated: round 0 and round 1
    again = fleet.admin.post(f"/runs/{run_id}/rounds/1/evaluation", json={"metrics": {"asr_refusal": 0.2}, "note": "b"})
    assert again.status_code == 201
    assert again.json() == {
        "run_id": run_id,
        "round_index": 1,
        "adapter_version": 1,
        "metrics": {"asr_refusal": 0.2},
        "note": "b",
    }
    data = fleet.admin.get(f"/runs/{run_id}/evaluations").json()["data"]
    assert [(e["round_index"], e["adapter_version"]) for e in data] == [(0, 0), (1, 1)]
    assert data[1]["metrics"] == {"asr_refusal": 0.2} and data[1]["note"] == "b"
    events = fleet.admin.get("/events", params={"run_id": run_id, "kind": "round_evaluated"}).json()["data"]
    assert [e["round_index"] for e in events] == [0, 1, 1]
    assert events[0]["detail"]["metrics"]["asr_refusal"] == pytest.approx(0.62)
