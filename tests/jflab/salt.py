"""Salt in the nodes: reading its JSON output, the baked Salt's minion, salt-call."""
from __future__ import annotations

import contextlib
import json

from .base import LabError
from .node import leader, run
from .rootfs import SALT_VENV


def first_json(text: str):
    """The first JSON document in text (Salt's --out=json, with other output around it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def salt_changed(results: dict) -> list[str]:
    """IDs of the states that changed something, from one minion's state results."""
    return sorted(ret.get("__id__", key) for key, ret in results.items() if ret.get("changes"))


def salt_failed(results: dict) -> dict[str, str]:
    """{state id: comment} of the failed states (Salt's "state not found" entries have no
    __id__: their key stands in)."""
    return {ret.get("__id__", key): ret.get("comment") for key, ret in results.items() if ret.get("result") is False}


def salt_call(name: str, *args: str, timeout: float = 300):
    """salt-call --local ARGS in node NAME with the baked Salt; returns what `local` holds."""
    res = run(name, [f"{SALT_VENV}/bin/salt-call", "--local", "--out=json", *args], timeout=timeout)
    try:
        return first_json(res.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        raise LabError(f"{name}: salt-call {' '.join(args)} gave no result: {res}") from None


def stop_minion(name: str, timeout: float = 30) -> None:
    """Stop a salt-minion service in the node if it has one (it can hang once its master is gone)."""
    if leader(name):
        with contextlib.suppress(LabError):
            run(name, "systemctl stop salt-minion.service 2>/dev/null || true", timeout=timeout)
