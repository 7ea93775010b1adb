"""
The README's first command on a fresh host: no Salt, no compiler, no Python headers,
no python3-venv. deploy.sh must install all of it, deploy, and print the password.
(A green run on a machine that already has them can hide a missing install step.)
Once per Debian suite of the lab: bookworm and trixie.
"""

import re

import pytest

pytestmark = pytest.mark.lab

STRIP = "gcc python3-dev python3-venv libc6-dev"


def test_deploy_sh_on_a_fresh_host(lab, suite, repo_bind, jupyter_login):
    node = f"fresh{lab.SUITES[suite]}"  # fresh12, fresh13
    ip = lab.boot(node, binds_ro=[repo_bind], suite=suite)
    try:
        # a writable copy of the checkout, as an admin would clone it; no baked Salt
        prepare = (
            f"rm -rf {lab.SALT_VENV} && DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq {STRIP} "
            "&& mkdir -p /root/jupyter-formula && cd /srv/jupyter-formula "
            "&& tar --exclude=.venv --exclude=.git -cf - . | tar -C /root/jupyter-formula -xf -"
        )
        assert lab.run(node, ["sh", "-c", prepare]).ok
        gone = lab.run(node, ["sh", "-c", f"dpkg-query -W -f='${{Status}}\\n' {STRIP} 2>/dev/null | grep -c 'ok installed'"])
        assert gone.stdout.strip() == "0"
        with lab.phase(f"quick start on a fresh {suite} host"):
            res = lab.run(node, ["/root/jupyter-formula/deploy.sh"], timeout=1200)
        assert res.ok, res
        assert "installing python3-venv python3-dev gcc libc6-dev" in res.stdout + res.stderr
        # progress while it runs: each state as it finishes (timing: tests/e2e/test_deploy_sh.py)
        assert len(re.findall(r"^deploy\.sh:   done ", res.stderr, re.M)) >= 15, res.stderr[-3000:]
        (password,) = re.findall(r"Jupyter password \(shown once, only its hash is stored\): (\S+)", res.stdout)
        lab.wait_http(f"http://{ip}/login")
        jupyter_login(f"http://{ip}/", password)
        again = lab.run(node, ["/root/jupyter-formula/deploy.sh"], timeout=600)
        assert again.ok and "Jupyter password" not in again.stdout
        assert "changed=" not in again.stdout  # Salt's summary shows changed=N only when something changed
    finally:
        lab.remove(node)
