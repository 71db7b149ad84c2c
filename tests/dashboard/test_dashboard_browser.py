"""The dashboard in headless Chromium against a real coordinator process with seeded runs.

Devices are in-test gRPC clients (they stand in for the edge client, which trains); everything else is real:
the coordinator process, its REST API and database, the page and its JavaScript. Waits are for selectors
and conditions with bounded timeouts, never for a time. Screenshots go to the artefacts folder.
"""

from __future__ import annotations

import json
import re

import pytest
from coordinator_helpers import make_adapter, run_config
from dashboard_helpers import ADMIN_KEY
from playwright.sync_api import expect

from feddetox.adapters import to_bytes

pytestmark = pytest.mark.slow

WAIT_MS = 30_000  # a bound on every wait for the page, not an expected time


def points(page, chart: str, series: str):
    return page.locator(f"#{chart} g[data-series='{series}'] .pt")


def open_run(page, run_id: str) -> None:
    page.goto(f"/#/runs/{run_id}")
    expect(page.locator("#run-head h1")).to_be_visible(timeout=WAIT_MS)


def shoot(page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True, animations="disabled")


def test_runs_list_shows_each_run_with_its_status_and_rounds(page_factory, runs, fleet, artifacts):
    run_id = runs.start(played=1, rounds=3, name="list-me")
    page = page_factory()
    page.goto("/")
    row = page.locator(f"tr[data-run='{run_id}']")
    expect(row).to_contain_text("list-me", timeout=WAIT_MS)
    expect(row.locator(".badge")).to_have_text("running")
    expect(row).to_contain_text("1 / 3")
    expect(page.locator("#runs-devices")).to_contain_text("Devices enrolled")
    shoot(page, artifacts, "runs-laptop")
    row.get_by_role("link", name="list-me").click()
    expect(page.locator("#main")).to_have_attribute("data-view", "run")
    assert page.errors == []


def test_run_page_shows_rounds_status_and_charts_with_a_point_per_round(page_factory, runs, fleet, artifacts):
    run_id = runs.start(played=2, rounds=4, name="charts")
    fleet.wait_round(run_id, 3, "collecting")
    refused_by = fleet.send_bad_update(run_id, 3)
    page = page_factory()
    open_run(page, run_id)
    for index, status in ((1, "closed"), (2, "closed"), (3, "collecting")):
        expect(page.locator(f"tr[data-round='{index}']")).to_have_attribute("data-status", status, timeout=WAIT_MS)
    expect(page.locator("ol.strip li")).to_have_count(4)  # the timeline shows every round of the run
    expect(page.locator("ol.strip li[data-status='future']")).to_have_count(1)
    # device metrics: one point per round with updates; evaluations: the start and each evaluated round
    expect(points(page, "chart-loss", "dpo_loss")).to_have_count(2)
    expect(points(page, "chart-margin", "reward_margin")).to_have_count(2)
    expect(points(page, "chart-sanitization", "flagged")).to_have_count(2)
    expect(points(page, "chart-sanitization", "replaced")).to_have_count(2)
    expect(points(page, "chart-asr", "asr_refusal")).to_have_count(3)
    expect(points(page, "chart-xstest", "xstest_safe_compliance")).to_have_count(3)
    expect(points(page, "chart-utility", "truthfulqa_mc1")).to_have_count(3)
    # the plotted values are the coordinator's (example-weighted loss of round 1)
    metrics = fleet.admin.get(f"/runs/{run_id}/metrics").json()["data"]
    first = float(points(page, "chart-loss", "dpo_loss").first.get_attribute("data-y"))
    assert first == pytest.approx(metrics[0]["metrics"]["dpo_loss"])
    # the open round: reporting, quorum and a deadline counting down; numbers for people
    now = page.locator("#run-now")
    expect(now).to_contain_text("0 / 3")
    expect(now).to_contain_text("quorum 2")
    expect(now.locator("[data-deadline]")).to_contain_text("closes in")
    expect(page.locator("#chart-asr .legend")).to_contain_text("34.0%")  # round 2's ASR, as a percentage
    # the devices table: the refused update with its reason, who is selected in this round
    device_row = page.locator(f"#run-devices tr[data-device='{refused_by}']")
    expect(device_row.locator(".refusals")).to_contain_text("shape ×1")
    expect(device_row.locator(".badge")).to_have_text("assigned")
    expect(page.locator("#run-events [data-kind='update_refused']")).to_contain_text("update refused: shape")
    shoot(page, artifacts, "run-laptop-open-round")
    assert page.errors == []


def test_a_run_without_evaluations_says_so(page_factory, runs):
    run_id = runs.start(evaluated=False, rounds=2)
    page = page_factory()
    open_run(page, run_id)
    expect(page.locator("#chart-asr [data-empty]")).to_contain_text("No evaluation yet", timeout=WAIT_MS)
    expect(page.locator("#chart-loss [data-empty]")).to_contain_text("No updates yet")


def test_a_round_closing_elsewhere_appears_without_a_reload(page_factory, runs, fleet, artifacts):
    run_id = runs.start(played=1, rounds=5, name="feddetox-replace")
    page = page_factory()
    open_run(page, run_id)
    expect(page.locator("tr[data-round='2']")).to_have_attribute("data-status", "collecting", timeout=WAIT_MS)
    expect(points(page, "chart-loss", "dpo_loss")).to_have_count(1)
    page.evaluate("window.__sameDocument = true")

    fleet.report(run_id, 2)  # elsewhere: the devices over gRPC
    expect(page.locator("tr[data-round='2']")).to_have_attribute("data-status", "closed", timeout=WAIT_MS)
    expect(points(page, "chart-loss", "dpo_loss")).to_have_count(2)
    expect(page.locator("#run-events")).to_contain_text("round 2 closed")
    fleet.evaluate(run_id, 2)
    expect(points(page, "chart-asr", "asr_refusal")).to_have_count(3, timeout=WAIT_MS)

    fleet.play(run_id, 3)
    fleet.evaluate(run_id, 3)
    fleet.wait_round(run_id, 4, "collecting")
    fleet.report(run_id, 4, count=2)  # round 4 in progress: two of three devices reported
    expect(page.locator("#run-now")).to_contain_text("2 / 3", timeout=WAIT_MS)
    expect(points(page, "chart-asr", "asr_refusal")).to_have_count(4)
    expect(points(page, "chart-loss", "dpo_loss")).to_have_count(4)  # round 4 so far
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    shoot(page, artifacts, "run-laptop")
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.screenshot(path=str(artifacts / "run-laptop-screen.png"), animations="disabled")  # docs/dashboard.png
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, artifacts, "run-phone")
    assert page.errors == []


def test_an_action_without_the_admin_key_is_refused_and_the_page_says_so(page_factory, runs, fleet, artifacts):
    run_id = runs.start(rounds=3)
    page = page_factory()
    open_run(page, run_id)
    expect(page.locator("body")).to_have_attribute("data-mode", "read-only")
    page.locator("button[data-action='pause']").click()
    alert = page.locator(".notice.error[role='alert']")
    expect(alert).to_contain_text("needs the admin key", timeout=WAIT_MS)
    shoot(page, artifacts, "refused-without-key")
    assert fleet.admin.get(f"/runs/{run_id}").json()["status"] == "running"

    # a wrong key is refused by the coordinator when entered
    alert.get_by_role("button", name="Enter admin key").click()
    page.locator("#key-input").fill("not-the-key-not-the-key")
    page.locator("#key-save").click()
    expect(page.locator("#key-error")).to_contain_text("refused this key")
    expect(page.locator("body")).to_have_attribute("data-mode", "read-only")

    # the right key: pause, resume and stop work
    page.locator("#key-input").fill(ADMIN_KEY)
    page.locator("#key-save").click()
    expect(page.locator("body")).to_have_attribute("data-mode", "operator")
    page.locator("button[data-action='pause']").click()
    expect(page.locator("#run-head .badge")).to_have_text("paused", timeout=WAIT_MS)
    assert fleet.admin.get(f"/runs/{run_id}").json()["status"] == "paused"
    page.locator("button[data-action='resume']").click()
    expect(page.locator("#run-head .badge")).to_have_text("running", timeout=WAIT_MS)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-action='stop']").click()
    expect(page.locator("#run-head .badge")).to_have_text("stopped", timeout=WAIT_MS)
    assert fleet.admin.get(f"/runs/{run_id}").json()["status"] == "stopped"
    assert page.evaluate("sessionStorage.getItem('feddetox.adminKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.getItem('feddetox.adminKey')") is None


def test_operator_creates_a_run_from_a_config(page_factory, runs, fleet, artifacts):
    page = page_factory(admin_key=ADMIN_KEY)
    page.goto("/")
    page.locator("button[data-action='new-run']").click()
    # a config the coordinator refuses: its message names the field
    page.locator("#run-config").fill(json.dumps(run_config(name="from-page", min_clients=5, clients_per_round=3)))
    page.locator("#run-form button[type='submit']").click()
    expect(page.locator("#run-error")).to_contain_text("min_clients", timeout=WAIT_MS)
    page.locator("#run-config").fill("{not json")
    page.locator("#run-form button[type='submit']").click()
    expect(page.locator("#run-error")).to_contain_text("not valid JSON")

    page.locator("#run-config").fill(json.dumps(run_config(name="from-page", rounds=2)))
    adapter = {"name": "adapter_model.safetensors", "mimeType": "application/octet-stream"}
    page.locator("#run-adapter").set_input_files({**adapter, "buffer": to_bytes(make_adapter(0))})
    page.locator("#run-form button[type='submit']").click()
    expect(page.locator("#main")).to_have_attribute("data-view", "run", timeout=WAIT_MS)
    run_id = page.url.rsplit("/", 1)[-1]
    runs.adopt(run_id)
    expect(page.locator("#run-head h1")).to_contain_text("from-page", timeout=WAIT_MS)
    run = fleet.admin.get(f"/runs/{run_id}").json()
    assert run["name"] == "from-page" and run["status"] == "running" and run["global_version"] == 0


def test_operator_issues_a_token_and_the_enrolled_device_appears(page_factory, fleet, coordinator, artifacts):
    from coordinator_helpers import Device

    page = page_factory(admin_key=ADMIN_KEY)
    page.goto("/#/devices")
    expect(page.locator("tr[data-device]")).to_have_count(len(fleet.devices), timeout=WAIT_MS)
    page.locator("button[data-action='token']").click()
    page.locator("#token-note").fill("bench board 7")
    page.locator("#token-issue").click()
    token = page.locator("#token-value")
    expect(token).to_have_value(re.compile(r"^fdt_"), timeout=WAIT_MS)
    page.locator("#token-dialog [data-close]").click()

    device = Device(coordinator.grpc_target).enrol(token.input_value(), "board-7")
    fleet.devices.append(device)  # it takes part in later rounds like the others
    row = page.locator(f"tr[data-device='{device.device_id}']")
    expect(row).to_contain_text("board-7", timeout=WAIT_MS)
    used = page.locator("#devices-tokens tr", has_text="bench board 7").locator(".badge")
    expect(used).to_have_text("used", timeout=WAIT_MS)
    shoot(page, artifacts, "devices-laptop")


def test_phone_width_and_dark_theme(page_factory, runs, artifacts):
    run_id = runs.start(played=1, rounds=3)
    page = page_factory(width=390, height=844, color_scheme="dark")
    open_run(page, run_id)
    expect(points(page, "chart-loss", "dpo_loss")).to_have_count(1, timeout=WAIT_MS)
    # nothing wider than the phone: wide tables scroll inside their own box
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    def background() -> list[int]:
        rgb = page.evaluate("getComputedStyle(document.body).backgroundColor")
        return [int(v) for v in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]

    assert sum(background()) < 3 * 80  # dark, from prefers-color-scheme
    shoot(page, artifacts, "run-phone-dark")
    toggle = page.locator("#theme-button")
    toggle.click()  # auto -> light
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    assert sum(background()) > 3 * 200
    toggle.click()  # light -> dark
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert sum(background()) < 3 * 80
    page.reload()  # the choice stays
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")


def test_keyboard_alone_reaches_a_run(page_factory, runs):
    run_id = runs.start(rounds=2, name="by-keyboard")
    page = page_factory()
    page.goto("/")
    expect(page.locator(f"tr[data-run='{run_id}']")).to_be_visible(timeout=WAIT_MS)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    target = f"run-{run_id}"
    for _ in range(40):
        if page.evaluate("document.activeElement.dataset.focus") == target:
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.focus") == target
    page.keyboard.press("Enter")
    expect(page.locator("#run-head h1")).to_contain_text("by-keyboard", timeout=WAIT_MS)
    # the admin key dialog opens, takes the key and closes from the keyboard
    page.locator("#key-button").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#key-dialog")).to_have_attribute("open", "")
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.locator("body")).to_have_attribute("data-mode", "operator", timeout=WAIT_MS)
