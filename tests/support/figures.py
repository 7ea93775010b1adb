"""Figures measured by tests (phase times, load results), printed at the end of the run."""

FIGURES = []


def record(section, text):
    FIGURES.append((section, text))
