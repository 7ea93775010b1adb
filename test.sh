#!/usr/bin/env bash
# Run the whole test suite: unit, functional, render, end to end (the formula applied
# to THIS host for real: nginx, supervisor and Jupyter get installed), the systemd lab
# (systemd-nspawn hosts) and the browser test. As root, on Debian or Ubuntu.
#   ./test.sh [PYTEST ARGS]     e.g. ./test.sh tests/unit -q
# The end-to-end and hardening layers run on this host and on systemd lab nodes:
#   JUPYTER_FORMULA_TARGETS=host,bookworm,plain (the default; add trixie; plain: a
#   bookworm node without systemd, for the faults that kill nginx or supervisord)
# A skipped test fails the run unless its skip was asked for, e.g.
#   JUPYTER_FORMULA_SKIP_LAB=1 (no lab nodes), JUPYTER_FORMULA_SKIP_SHARED_FAULTS=1
#   (this host runs a real deployment: no faults that kill its nginx or supervisord)
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root" >&2; exit 1; }

# What the tests use besides what the formula installs itself (nginx, supervisor for
# the formula are installed by the end-to-end test through the formula).
systemd_version=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
packages=(supervisor debootstrap tinyproxy openssl chromium wrk curl pebble)
# systemd-container pinned to the host's systemd, so the host's systemd is not upgraded
[ -n "$systemd_version" ] && packages+=("systemd-container=$systemd_version")
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status} ${Version}\n' "${pkg%%=*}" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tinyproxy is installed for the lab, which runs its own proxy on its bridge. The
# package's service listens on port 8888 (Jupyter's default port): stop it and keep it
# from starting at boot, so that it never collides with a deployment or a test.
if [ -d /run/systemd/system ]; then
    systemctl disable --now tinyproxy.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/tinyproxy ]; then
    # only through its pidfile: the init script's --exec alone would stop the lab's proxy too
    [ -s /run/tinyproxy/tinyproxy.pid ] && { service tinyproxy stop >/dev/null 2>&1 || true; }
    update-rc.d tinyproxy disable >/dev/null 2>&1 || true
fi

./deploy.sh --salt-only
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt

set +e
# no path arguments: pytest.ini's testpaths (all of tests/); `./test.sh tests/unit` runs one layer
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure too
[ "$rc" = 5 ] && { echo "test.sh: no tests ran" >&2; rc=1; }
exit "$rc"
