"""Prints the image test's figures (sizes, build and start times) at the end of the run, captured or not."""

from __future__ import annotations

import pytest

from tests.deploy.engine import REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("recipelens images")
        for line in REPORT:
            terminalreporter.write_line(line)
