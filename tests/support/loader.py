"""Import the formula's custom modules by path with Salt's loader dunders mocked."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load(kind, name, **dunders):
    """kind: '_modules' or '_states'. dunders: salt={...}, opts={...}, pillar={...}, ..."""
    spec = importlib.util.spec_from_file_location(f"{kind[1:]}_{name}", REPO / kind / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defaults = {"salt": {}, "opts": {"test": False}, "grains": {}, "pillar": {}, "context": {}}
    for key, value in {**defaults, **dunders}.items():
        setattr(module, f"__{key}__", value)
    return module


def file_str(path, saltenv="base"):
    """cp.get_file_str for salt:// URLs served from the repository."""
    return (REPO / path.replace("salt://", "")).read_text()
