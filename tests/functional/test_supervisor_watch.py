"""
One restart per run, proven with Salt's own state engine (salt-call --local)
against a private supervisord: no bookkeeping of ours is needed for it.

Salt calls a state's ``mod_watch`` only when the state's own run made no
changes (``call_chunk`` in salt/state.py). So when the program file changed,
``supervisor_program.running`` updates (restarts) the program and a watched
change in the same run adds no second restart; when only a watched file
changed, ``mod_watch`` restarts it once.

Each salt-call has a config dir of its own under the test's tmp_path (cache,
extension modules, pki, log), and file_roots holding a small sls and links to
the repository's supervisor_rpc and supervisor_program only.
"""

import json
import pathlib
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from support.loader import REPO  # noqa: E402
from supervisor_fixture import (  # noqa: E402
    PYTHON,
    VERSIONS,
    PrivateSupervisord,
    supervisord_binary,
)

SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"
RUNNING = "supervisor_program_|-watchtest-program_|-app_|-running"
PROGRAM_FILE = "file_|-watchtest-program-file_|-{}_|-managed"
WATCHED = "file_|-watchtest-watched_|-{}_|-managed"

SLS = """\
{% set p = pillar["watchtest"] %}
watchtest-watched:
  file.managed:
    - name: {{ p.watched }}
    - contents_pillar: watchtest:watched_contents

watchtest-program-file:
  file.managed:
    - name: {{ p.program_file }}
    - contents_pillar: watchtest:program

watchtest-program:
  supervisor_program.running:
    - name: app
    - socket: {{ p.socket }}
    - ready_port: {{ p.port }}
    - timeout: 30
    - watch:
      - file: watchtest-program-file
      - file: watchtest-watched
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server(port, tag):
    """A program that listens on ``port`` at once; ``tag`` makes its command differ."""
    return (
        '{} -c "import socket, time; s = socket.socket(); '
        "s.bind(('127.0.0.1', {})); s.listen(); time.sleep(600)\" {}".format(PYTHON, port, tag)
    )


@pytest.fixture
def daemon(request):
    """Debian's supervisord: this is about Salt's engine, not supervisor's version."""
    version = VERSIONS[0]
    made = PrivateSupervisord(supervisord_binary(version, request.config), version)
    yield made
    made.stop()


@pytest.fixture
def minion(tmp_path):
    """A masterless minion config dir, as deploy.sh writes one, but all in tmp_path."""
    roots = tmp_path / "roots"
    for kind, name in (("_modules", "supervisor_rpc"), ("_states", "supervisor_program")):
        (roots / kind).mkdir(parents=True)
        (roots / kind / (name + ".py")).symlink_to(REPO / kind / (name + ".py"))
    (roots / "watchtest.sls").write_text(SLS)
    (tmp_path / "pillar").mkdir()
    config = tmp_path / "etc"
    config.mkdir()
    (config / "minion").write_text(
        "id: supervisor-watch-test\n"
        "file_client: local\n"
        "file_roots: {{base: [{roots}]}}\n"
        "pillar_roots: {{base: [{tmp}/pillar]}}\n"
        "cachedir: {tmp}/cache\n"
        # its default is under /var/cache/salt whatever cachedir says
        "extension_modules: {tmp}/extmods\n"
        "pki_dir: {tmp}/pki\n"
        "sock_dir: {tmp}/sock\n"
        "log_file: {tmp}/minion.log\n".format(roots=roots, tmp=tmp_path)
    )
    return config


def apply(minion, pillar, test=False):
    """state.apply watchtest; returns the state results by tag."""
    cmd = [
        str(SALT_CALL), "--config-dir={}".format(minion), "--local", "--out=json",
        "state.apply", "watchtest", "sync_mods=modules,states",
        "pillar={}".format(json.dumps({"watchtest": pillar})),
    ]
    if test:
        cmd.append("test=True")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    try:
        results = json.loads(done.stdout)["local"]
    except (ValueError, KeyError):
        pytest.fail("salt-call gave no state results:\n{}\n{}".format(done.stdout, done.stderr))
    assert isinstance(results, dict), results
    return results


def test_one_restart_per_run_whatever_changed(daemon, minion, tmp_path):
    port = free_port()
    watched = tmp_path / "watched.conf"
    watched.write_text("v1\n")
    first = daemon.program_text("app", server(port, "one"))
    program_file = daemon.write_file("app", first)
    daemon.start()
    original = daemon.wait_for("app", "RUNNING")["pid"]
    pillar = {"watched": str(watched), "watched_contents": "v1", "program": first,
              "program_file": program_file, "socket": daemon.socket, "port": port}
    program_tag = PROGRAM_FILE.format(program_file)
    watched_tag = WATCHED.format(watched)

    def app_pid():
        return daemon.rpc().getProcessInfo("app")["pid"]

    # nothing changed: nothing restarts
    ret = apply(minion, pillar)
    assert all(r["result"] is True and r["changes"] == {} for r in ret.values()), ret
    assert daemon.spawns("app") == 1 and app_pid() == original

    # test=True with both changes: one restart predicted (the file is not written,
    # so supervisord sees no new configuration: Salt asks mod_watch), none done
    second = daemon.program_text("app", server(port, "two"))
    both = dict(pillar, watched_contents="v2", program=second)
    ret = apply(minion, both, test=True)
    assert ret[RUNNING]["result"] is None, ret[RUNNING]
    assert ret[RUNNING]["changes"] == {"restarted": ["app"]}, ret[RUNNING]
    assert daemon.spawns("app") == 1 and app_pid() == original

    # the program file AND a watched file changed: running updates the program;
    # Salt does not call mod_watch after that: one start, not two
    ret = apply(minion, both)
    assert ret[program_tag]["changes"] and ret[watched_tag]["changes"], ret
    assert daemon.spawns("app") == 2, ret[RUNNING]
    assert ret[RUNNING]["result"] is True, ret[RUNNING]
    assert ret[RUNNING]["changes"]["updated"] == "changed"
    assert "restarted" not in ret[RUNNING]["changes"]
    updated = app_pid()
    assert ret[RUNNING]["changes"]["pid"] == {"old": {"app": original}, "new": {"app": updated}}
    assert updated != original

    # only the watched file changed: mod_watch restarts it, once
    ret = apply(minion, dict(both, watched_contents="v3"))
    assert ret[watched_tag]["changes"] and not ret[program_tag]["changes"], ret
    assert daemon.spawns("app") == 3, ret[RUNNING]
    assert ret[RUNNING]["result"] is True, ret[RUNNING]
    restarted = app_pid()
    assert ret[RUNNING]["changes"] == {
        "restarted": ["app"], "pid": {"old": {"app": updated}, "new": {"app": restarted}}}
    assert restarted != updated

    # and again nothing: 0 changes, same pid
    ret = apply(minion, dict(both, watched_contents="v3"))
    assert all(r["changes"] == {} for r in ret.values()), ret
    assert daemon.spawns("app") == 3 and app_pid() == restarted
