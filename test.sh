#!/usr/bin/env bash
# Run the whole test suite: unit, functional, render, end to end (the formula applied
# to THIS host for real: nginx, supervisor and Jupyter get installed), the systemd lab
# (systemd-nspawn hosts) and the browser test. As root, on Debian or Ubuntu.
#   ./test.sh [PYTEST ARGS]     e.g. ./test.sh tests/unit -q
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root" >&2; exit 1; }

# What the tests use besides what the formula installs itself (nginx, supervisor for
# the formula are installed by the end-to-end test through the formula).
systemd_version=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
packages=(supervisor debootstrap tinyproxy openssl chromium wrk curl)
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
