"""
Where a deployment lives: THIS host (PID 1 is not systemd here: the formula's
init-script fallback in ``_states/jupyter_service.py``) or a systemd lab node (Debian 12
or 13 under systemd-nspawn, see tests/jflab). A test written against ``Target`` runs on
both and asserts effects (pids, what serves, files), whichever path the formula took.

    target.name         "host", or the node's name ("jft12")
    target.kind         "host", or the node's suite ("bookworm", "trixie")
    target.systemd      True where PID 1 is systemd
    target.address      where the test process reaches the target's nginx
    target.repo         where the repository is seen on the target (nodes: a read-only bind)
    target.salt_venv    Salt's venv on the target (host: .venv; nodes: the baked /opt/salt)
    target.run(cmd)     a command on the target -> Result(rc, stdout, stderr)
    target.popen(cmd)   the same, streaming (stdout and stderr pipes)
    target.read/write/exists/remove(path)
    target.service(action, unit)        systemctl there, `service` (init scripts) here
    target.kill(pid, signal)            pids as the target sees them
    target.nginx_pids(), target.supervisord_pid(), target.listeners(port)
    target.lock()       what serialises appliers: the host lock here; on nodes the lab
                        session lock that the `lab` fixture already holds
"""

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jflab.base

REPO = Path(__file__).resolve().parents[2]
HOST_VENV = Path(os.environ.get("JUPYTER_FORMULA_VENV", REPO / ".venv"))
REPO_IN_NODE = "/srv/jupyter-formula"


class Result(jflab.base.Result):
    """The lab's Result (rc, stdout, stderr, ok), whose text keeps the last 4,000
    characters of each stream: an apply's whole output would drown an assertion."""

    @property
    def returncode(self):  # subprocess.CompletedProcess's name, for older callers
        return self.rc

    def __str__(self):
        tail = dataclasses.replace(self, stdout=self.stdout[-4000:], stderr=self.stderr[-4000:])
        return jflab.base.Result.__str__(tail)


# Run on the target by tree_signature(): one line per entry, what an apply could change.
_TREE_SCRIPT = r"""
import json, os, stat, sys
out = {}
def entry(path):
    st = os.lstat(path)
    what = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    out[path] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                 st.st_size if stat.S_ISREG(st.st_mode) else 0, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, what]
for root in sys.argv[1:]:
    if not os.path.lexists(root):
        out[root] = None
        continue
    entry(root)
    if os.path.isdir(root) and not os.path.islink(root):
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                entry(os.path.join(top, name))
json.dump(out, sys.stdout)
"""


class Target:
    name = kind = address = repo = salt_venv = None
    systemd = False

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    # --- commands ----------------------------------------------------------

    def run(self, cmd, input=None, timeout=600, env=None, check=False):
        raise NotImplementedError

    def popen(self, cmd, env=None):
        raise NotImplementedError

    def sh(self, script, **kwargs):
        return self.run(["/bin/sh", "-c", script], **kwargs)

    # --- files ---------------------------------------------------------------

    def read(self, path):
        """The file's text, or None when it does not exist."""
        res = self.run(["cat", "--", path])
        return res.stdout if res.ok else None

    def write(self, path, text, mode="0600"):
        self.run(["/bin/sh", "-c", 'umask 077; mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                  "write", path, mode], input=text, check=True)

    def exists(self, path):
        return self.run(["test", "-e", path]).ok

    def remove(self, *paths):
        self.run(["rm", "-rf", "--", *paths], check=True)

    def tree_signature(self, roots):
        """{path: [type, mode, uid, gid, size, mtime, ctime, inode, link]} of every entry
        under roots (files too); a root that does not exist maps to None. Any write,
        chmod, chown, rename or new entry shows (ctime), without hashing the venvs."""
        res = self.run([self.python, "-c", _TREE_SCRIPT, *roots], check=True, timeout=300)
        return json.loads(res.stdout)

    @property
    def python(self):
        return "/usr/bin/python3"

    # --- processes and services -----------------------------------------------

    def service(self, action, unit):
        raise NotImplementedError

    def kill(self, pid, sig=signal.SIGKILL):
        return self.run(["kill", f"-{int(sig)}", str(pid)])

    def alive(self, pid):
        """The process exists and is not a zombie."""
        res = self.run(["ps", "-o", "stat=", "-p", str(pid)])
        return res.ok and not res.stdout.strip().startswith("Z")

    def pidfile(self, path):
        text = self.read(path)
        try:
            return int(text.split()[0]) if text else None
        except (ValueError, IndexError):
            return None

    def children(self, pid):
        res = self.run(["ps", "--no-headers", "-o", "pid", "--ppid", str(pid)])
        return sorted(int(p) for p in res.stdout.split())

    def nginx_pids(self):
        """(master pid, sorted pids of its serving workers) of the running nginx (master
        None when down). Workers of an earlier configuration that are shutting down (they
        finish their open connections after a reload) are not counted."""
        master = self.pidfile("/run/nginx.pid")
        if not master or not self.alive(master):
            return None, []
        res = self.run(["ps", "--no-headers", "-o", "pid,args", "--ppid", str(master)])
        workers = [int(line.split()[0]) for line in res.stdout.splitlines()
                   if line.strip() and "shutting down" not in line]
        return master, sorted(workers)

    def nginx_reload(self, timeout=15):
        """nginx -s reload by hand, as an admin would; returns once new workers serve."""
        _, old = self.nginx_pids()
        res = self.run(["nginx", "-s", "reload"])
        if not res.ok:
            return res
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, workers = self.nginx_pids()
            if workers and not set(workers) & set(old):
                return res
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: nginx did not replace its workers {old} within {timeout}s")

    def supervisord_pid(self):
        pid = self.pidfile("/var/run/supervisord.pid")
        return pid if pid and self.alive(pid) else None

    def listeners(self, port):
        """[(local address, [pids])] of the TCP sockets listening on port."""
        res = self.run(["ss", "-Hltnp", f"sport = :{port}"], check=True)
        found = []
        for line in res.stdout.splitlines():
            fields = line.split()
            pids = [int(part[4:]) for part in " ".join(fields[5:]).replace(")", ",").split(",")
                    if part.startswith("pid=")]
            found.append((fields[3], pids))
        return found

    def proc_owner(self, pid):
        return self.run(["ps", "-o", "user=", "-p", str(pid)]).stdout.strip()

    def environ(self, pid):
        res = self.run(["cat", f"/proc/{pid}/environ"], check=True)
        return res.stdout.split("\0")

    def supervisor_status(self, program):
        """(state, pid) of a supervisor program; pid also while STARTING."""
        res = self.run(["supervisorctl", "status", program])
        fields = res.stdout.split()
        state = fields[1] if len(fields) > 1 and fields[0] == program else (res.stdout.strip() or res.stderr.strip())
        pid = None
        if state in ("RUNNING", "STARTING"):
            got = self.run(["supervisorctl", "pid", program]).stdout.strip()
            pid = int(got) if got.isdigit() and got != "0" else None
        return state, pid

    @contextlib.contextmanager
    def lock(self):
        yield


class HostTarget(Target):
    """This machine. Its nginx and supervisord are shared with whatever else runs here:
    tests hold lock() (the host lock) while they apply or kill daemons."""

    name = kind = "host"
    address = "127.0.0.1"

    def __init__(self):
        self.systemd = os.path.isdir("/run/systemd/system")
        self.repo = str(REPO)
        self.salt_venv = str(HOST_VENV)

    def _env(self, env):
        return {**os.environ, **(env or {})}

    def run(self, cmd, input=None, timeout=600, env=None, check=False):
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]
        proc = subprocess.run(argv, input=input or "", capture_output=True, text=True, timeout=timeout,
                              env=self._env(env), check=False, errors="replace")
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and not res.ok:
            raise AssertionError(f"host: {shlex.join(argv)} failed: {res}")
        return res

    def popen(self, cmd, env=None):
        return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self._env(env), bufsize=1, errors="replace")

    @property
    def python(self):
        return sys.executable

    def service(self, action, unit):
        if self.systemd:
            return self.run(["systemctl", action, unit], timeout=180)
        return self.run(["service", unit, action], timeout=180)

    @contextlib.contextmanager
    def lock(self):
        from support.deployment import host_lock  # noqa: PLC0415 - one lock for every host applier

        with host_lock():
            yield

    # What a real deployment on this host would have: tests must stay off it.
    def foreign_programs(self, own_prefix):
        """Supervisor programs on this host that are not a test's own."""
        res = self.run(["supervisorctl", "status"])
        return sorted(line.split()[0] for line in res.stdout.splitlines()
                      if line.strip() and not line.split()[0].startswith(own_prefix))

    def foreign_sites(self, own_prefix):
        enabled = Path("/etc/nginx/sites-enabled")
        return sorted(p.name for p in enabled.iterdir() if not p.name.startswith(own_prefix)) if enabled.is_dir() else []


class NodeTarget(Target):
    """A systemd lab node (tests/jflab). Commands run inside it as transient services
    (systemd-run --wait --pipe: a clean environment and a cgroup of their own)."""

    systemd = True

    def __init__(self, lab, name, suite):
        self.lab = lab
        self.name = name
        self.kind = suite
        self.repo = REPO_IN_NODE
        self.salt_venv = lab.SALT_VENV
        self.address = lab.node_ip(name)

    def _run(self, cmd, input, timeout, env):
        res = self.lab.run(self.name, cmd, input=input, timeout=timeout, env=env)
        return Result(res.rc, res.stdout, res.stderr)

    def run(self, cmd, input=None, timeout=600, env=None, check=False):
        res = self._run(cmd, input, timeout, env)
        if check and not res.ok:
            raise AssertionError(f"{self.name}: {cmd if isinstance(cmd, str) else shlex.join(map(str, cmd))} "
                                 f"failed: {res}")
        return res

    def popen(self, cmd, env=None):
        """What jflab.run does, as a Popen: output arrives while the command runs."""
        argv, _ = self.lab.run_argv(self.name, cmd, env)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, bufsize=1, errors="replace")

    def service(self, action, unit):
        return self.run(["systemctl", action, unit], timeout=180)

    def systemctl_show(self, unit, *props):
        res = self.run(["systemctl", "show", unit, *[f"-p{p}" for p in props]], check=True)
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def reboot(self):
        self.lab.reboot(self.name)
        self.address = self.lab.node_ip(self.name)


HOST = HostTarget()
