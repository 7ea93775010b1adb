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


def settings_module(pillar, os_family="Debian", context=None, facts=None, **salt):
    """The jupyter module (jupyter.settings) with the real validator and venv ids, as the
    loader gives them; no host facts unless given. salt=... replaces functions."""
    context = {} if context is None else context
    validator = load("_modules", "jupyter_pillar")
    venv = load("_modules", "jupyter_venv", context=context)
    functions = {
        "cp.get_file_str": file_str,
        **{f"jupyter_pillar.{name}": getattr(validator, name)
           for name in ("check_layer", "check_instance", "check_instances")},
        "jupyter_pillar.gather_facts": lambda result: facts or {},
        "jupyter_venv.venv_id": venv.venv_id,
    }
    functions.update(salt)
    return load("_modules", "jupyter", salt=functions, grains={"os_family": os_family},
                pillar={"jupyter": pillar}, context=context)
