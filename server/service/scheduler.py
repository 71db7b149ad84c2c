"""The round scheduler: a thread that advances every running run each tick (and at once when poked).

It holds no state of its own: each tick reads the database, so a restarted coordinator resumes where
the last one stopped, and several coordinators may run one each (the row locks of `rounds.advance`
keep them from doing a transition twice).
"""

from __future__ import annotations

import threading

from server.service.context import ServiceContext, log
from server.service.rounds import advance_all


class Scheduler:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="round-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.ctx.wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.ctx.wake.wait(self.ctx.settings.tick_s)
            self.ctx.wake.clear()
            if self._stop.is_set():
                break
            try:
                for step in advance_all(self.ctx):
                    log.info("scheduler: %s", step)
            except Exception:  # a broken tick must not end the scheduler; the next tick retries
                log.exception("scheduler tick failed")
