"""Shared by every layer: the figures that tests measured go into the run's output."""

from support.figures import FIGURES


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("figures measured by the tests")
    for section, text in FIGURES:
        terminalreporter.write_line(f"[{section}] {text}")
