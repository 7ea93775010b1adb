"""Figures measured by tests (phase times, load results), printed at the end of the run."""

FIGURES = []


def record(section, text):
    FIGURES.append((section, text))


class Section:
    """A list-like sink for one section's lines: ``figures.append("2,560 req/s")``."""

    def __init__(self, name):
        self.name = name

    def append(self, text):
        record(self.name, text)
