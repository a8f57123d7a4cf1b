"""The quick suite's guard (a pytest plugin, loaded by conftest.py): every test not marked `slow` must finish
within QUICK_TEST_BUDGET_S seconds (setup + call + teardown), so that a new slow test is marked as such and
`make test` stays quick. In CI (the CI variable set, as .ci/run does) a test over it fails the session, naming it;
elsewhere it is named as a warning, since a laptop busy with a training run slows every test. The budget holds
1.5x the slowest quick test measured alone on a 2-core machine (25 s: docs/testing.md) with room to spare, so
that a machine 1.5x slower still passes. REPRO_QUICK_TEST_BUDGET_S overrides it (0: off)."""
from __future__ import annotations

import os
from collections import defaultdict

import pytest

QUICK_TEST_BUDGET_S = 45.0


class QuickBudget:
    def __init__(self, budget_s: float, enforce: bool):
        self.budget_s, self.enforce = budget_s, enforce
        self.seconds: dict[str, float] = defaultdict(float)
        self.over: list[tuple[str, float]] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report) -> None:
        if "slow" not in report.keywords:
            self.seconds[report.nodeid] += report.duration

    @pytest.hookimpl
    def pytest_sessionfinish(self, session) -> None:
        self.over = sorted(((n, s) for n, s in self.seconds.items() if s > self.budget_s), key=lambda x: -x[1])
        if self.over and self.enforce and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.over:
            terminalreporter.section("quick-test budget exceeded" + ("" if self.enforce else " (a warning here; "
                                     "a failure in CI)"), red=self.enforce, yellow=not self.enforce)
            for nodeid, s in self.over:
                terminalreporter.line(f"{nodeid} took {s:.1f} s, over the {self.budget_s:g} s budget of a quick "
                                      f"test: make it cheaper or mark it @pytest.mark.slow")


def pytest_configure(config) -> None:
    budget = float(os.environ.get("REPRO_QUICK_TEST_BUDGET_S", QUICK_TEST_BUDGET_S))
    if budget > 0 and not hasattr(config, "workerinput"):  # the controller sees every report (xdist workers too)
        config.pluginmanager.register(QuickBudget(budget, enforce=bool(os.environ.get("CI"))), "repro-quick-budget")
