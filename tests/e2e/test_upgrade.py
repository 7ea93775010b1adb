"""
Upgrades that cannot break a working server, on the e2e deployment of each target,
checked through nginx (issue 14's proof; tests/functional/test_venv_upgrade.py checks
the same states without nginx, piece by piece). In order:

1. a package set with a server extension that raises while loading: the apply fails
   naming the 'extensions' check, the old Jupyter pid still serves login and a kernel
   through nginx, and the same pillar again fails in seconds, without a rebuild;
2. a good set: one restart, nginx untouched, the password hash kept, login works and the
   new extension answers;
3. ``salt-call jupyter.rollback``: the previous venv serves again (the extension is
   gone), ``jupyter.history`` lists both with their package sets.

The test wheelhouse (support.wheelhouse) is the extra index: nothing of it is downloaded.
"""

import json
import time

from e2e.conftest import PILLAR
from support.deployment import JUPYTERLAB, changed, failed, first_json, merge
from support.wheelhouse import BAD_EXT_ERROR

LINK = PILLAR["venv"]
CONFIG_FILE = PILLAR["config_file"]


def live_venv(dep):
    return dep.target.run(["readlink", "-f", LINK], check=True).stdout.strip()


def password_hash(dep):
    return json.loads(dep.target.read(CONFIG_FILE))["PasswordIdentityProvider"]["hashed_password"]


def good_ext(dep):
    client = dep.login()
    return client.session.get(dep.url("jfv-good-ext"), timeout=10)


def own_failures(results):
    """The failed states that failed for a reason of their own (not a failed requisite)."""
    return {sid: comment for sid, comment in failed(results).items() if "requisite failed" not in comment}


def with_packages(wheelhouse, *extra):
    return merge(PILLAR, {"packages": [JUPYTERLAB, *extra],
                          "pip": {"extra_index_urls": [wheelhouse["extra_index_url"]]}})


def test_upgrade_refused_then_good_upgrade_then_rollback(base, wheelhouse, figures):
    dep, target = base, base.target
    dep.wait_settled()
    old_venv, old_pid, nginx, old_hash = live_venv(dep), dep.jupyter_pid(), target.nginx_pids(), password_hash(dep)
    assert dep.serves()

    # 1. an extension that raises at load: refused, the old server never stops serving
    dep.write_pillar(with_packages(wheelhouse, "jfv-bad-ext==1.0"))
    start = time.monotonic()
    results = dep.apply()
    first_s = time.monotonic() - start
    errors = own_failures(results)
    assert set(errors) == {"jupyter-package-venv"}, errors
    assert "failed the 'extensions' check" in errors["jupyter-package-venv"]
    assert BAD_EXT_ERROR in errors["jupyter-package-venv"]
    assert "jupyter-supervisor-program" not in changed(results)
    assert live_venv(dep) == old_venv
    assert dep.jupyter_pid() == old_pid and dep.serves(), "the old server must serve through nginx"

    start = time.monotonic()
    again = dep.apply()
    again_s = time.monotonic() - start
    assert set(own_failures(again)) == {"jupyter-package-venv"}, failed(again)
    assert "is not checked again until they change" in own_failures(again)["jupyter-package-venv"]
    assert changed(again) == {}, changed(again)
    assert again_s < first_s / 2, f"the repeated failure took {again_s:.1f} s (first: {first_s:.1f} s)"
    assert dep.jupyter_pid() == old_pid
    figures.append(f"{target.name}: upgrade with a raising extension refused in {first_s:.0f} s "
                   f"(build + check), again in {again_s:.1f} s (whole apply, no rebuild)")

    # 2. a good set: one restart of Jupyter, nginx untouched, the password kept
    dep.write_pillar(with_packages(wheelhouse, "jfv-good-ext==1.0"))
    results = dep.apply()
    assert not failed(results), failed(results)
    assert "jupyter-package-venv" in changed(results)
    good_venv = live_venv(dep)
    assert good_venv != old_venv
    new_pid = dep.jupyter_pid()
    assert new_pid not in (None, old_pid)
    dep.wait_settled()
    assert dep.jupyter_pid() == new_pid, "restarted more than once"
    assert target.nginx_pids() == nginx
    assert password_hash(dep) == old_hash
    dep.wait_for_jupyter()
    assert dep.serves()
    assert good_ext(dep).text == "jfv-good-ext 1.0"

    # 3. rollback: the previous venv serves again
    start = time.monotonic()
    proc = dep.salt_call("jupyter.rollback", "--out=json", "--retcode-passthrough")
    rollback_s = time.monotonic() - start
    assert proc.ok, proc
    switched = first_json(proc.stdout)["local"]["jupyter"]
    assert (switched["old"], switched["new"], switched["program"]) == (good_venv, old_venv, dep.program), switched
    assert live_venv(dep) == old_venv
    dep.wait_for_jupyter()
    assert dep.jupyter_pid() not in (None, new_pid)
    assert dep.serves()
    assert good_ext(dep).status_code == 404
    history = first_json(dep.salt_call("jupyter.history", "--out=json").stdout)["local"]["jupyter"]
    listed = {v["venv"]: v for v in history["venvs"]}
    assert history["live"] == old_venv
    assert "jfv-good-ext==1.0" in listed[good_venv]["packages"] and listed[good_venv]["rolled_back"]
    assert listed[old_venv]["packages"] == [JUPYTERLAB]
    figures.append(f"{target.name}: salt-call jupyter.rollback {rollback_s:.1f} s")
