"""Fixtures of the dashboard tests: a real coordinator process, in-test gRPC devices, headless Chromium.

The browser is Debian's `chromium` driven by Playwright (which cannot download its own browser here);
screenshots go to `$FEDDETOX_TEST_ARTIFACTS` if set, else to this session's pytest tmp folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "server"))  # coordinator_helpers

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go."""
    folder = os.environ.get("FEDDETOX_TEST_ARTIFACTS")
    path = Path(folder) / "dashboard" if folder else tmp_path_factory.mktemp("dashboard-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (Debian's), shared by the session; each test opens its own context."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def coordinator(tmp_path_factory: pytest.TempPathFactory):
    """One coordinator process for the session (SQLite, scheduler ticking every 0.2 s) on free loopback ports;
    each test makes its own runs and stops them."""
    from coordinator_helpers import CoordinatorProcess

    process = CoordinatorProcess(tmp_path_factory.mktemp("dashboard") / "state").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def fleet(coordinator):
    """Three enrolled in-test devices."""
    from dashboard_helpers import Fleet

    made = Fleet.enrol(coordinator, 3)
    yield made
    made.close()


@pytest.fixture
def runs(fleet):
    """runs.start(played=N, evaluated=True, **config) -> a started run whose first N rounds closed (and were
    evaluated, with the start); every run made here is stopped after the test, which cancels its open round."""
    made: list[str] = []

    class Runs:
        def start(self, played: int = 0, evaluated: bool = True, **overrides) -> str:
            run_id = fleet.start_run(**overrides)
            made.append(run_id)
            if evaluated:
                fleet.evaluate(run_id, 0)
            for index in range(1, played + 1):
                fleet.play(run_id, index)
                if evaluated:
                    fleet.evaluate(run_id, index)
            return run_id

        def adopt(self, run_id: str) -> None:
            made.append(run_id)

    yield Runs()
    for run_id in made:
        fleet.admin.post(f"/runs/{run_id}/stop")  # 409 for a run already over: fine


@pytest.fixture
def page_factory(chromium, coordinator):
    """page_factory(width, height, color_scheme="light", admin_key=None) -> a Playwright page in a fresh context."""
    contexts = []

    def make(width: int = 1280, height: int = 800, color_scheme: str = "light", admin_key: str | None = None):
        context = chromium.new_context(
            viewport={"width": width, "height": height}, color_scheme=color_scheme, base_url=coordinator.url
        )
        if admin_key:
            context.add_init_script(f"sessionStorage.setItem('feddetox.adminKey', {admin_key!r})")
        contexts.append(context)
        page = context.new_page()
        page.errors = []  # uncaught exceptions, and anything the page's Content-Security-Policy blocked
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on(
            "console",
            lambda m: m.type == "error" and "Content Security Policy" in m.text and page.errors.append(m.text),
        )
        return page

    yield make
    for context in contexts:
        context.close()
