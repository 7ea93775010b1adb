"""The lab itself: a node is a real systemd host whose apt and pip go through the lab's proxy."""

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def smoke(lab):
    lab.boot("smoke")
    yield "smoke"
    lab.remove("smoke")


def through_proxy(lab, node, cmd):
    """Run cmd in node; assert it succeeded and that the lab's proxy served the node meanwhile.

    Returns (result, what the proxy logged meanwhile).
    """
    before = lab.proxy_log().stat().st_size
    res = lab.run(node, cmd, timeout=300)
    assert res.ok, res
    log = lab.proxy_log().read_text(errors="replace")[before:]
    assert f"): {lab.node_ip(node)}\n" in log, log[-2000:]
    return res, log


def test_systemd_is_pid1(lab, smoke):
    res = lab.run(smoke, ["cat", "/proc/1/comm"])
    assert res.ok and res.stdout.strip() == "systemd", res
    assert lab.run(smoke, ["hostname"]).stdout.strip() == smoke


def test_system_is_running(lab, smoke):
    res = lab.run(smoke, ["systemctl", "is-system-running"])
    failed = lab.run(smoke, ["systemctl", "--failed", "--no-legend"]).stdout
    assert res.stdout.strip() == "running", f"{res}\nfailed units:\n{failed}"


def test_run_gives_a_clean_environment_and_unit(lab, smoke, monkeypatch):
    monkeypatch.setenv("JFLAB_LEAK", "leaked")
    res = lab.run(smoke, "echo x$JFLAB_LEAK; echo $BAR; cat /proc/self/cgroup", env={"BAR": "given"})
    assert res.ok, res
    lines = res.stdout.splitlines()
    assert lines[:2] == ["x", "given"]  # nothing leaks from the caller's environment
    assert "jflab-run-" in res.stdout  # a transient service of its own
    res = lab.run(smoke, "exit 3")
    assert res.rc == 3
    res = lab.run(smoke, ["cat"], input="from stdin\n")
    assert res.stdout == "from stdin\n"


def test_node_has_no_route_out(lab, smoke):
    routes = lab.run(smoke, ["ip", "-4", "route"]).stdout
    assert "default" not in routes, routes
    assert f"{lab.NETWORK} dev host0" in routes, routes


def test_apt_through_proxy(lab, smoke):
    res, log = through_proxy(lab, smoke, "apt-get update -q && "
                             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q hello && hello")
    assert "Hello, world!" in res.stdout
    assert "GET http://" in log, log[-2000:]


def test_pip_through_proxy(lab, smoke):
    res, log = through_proxy(lab, smoke, "/opt/salt/bin/pip download --no-cache-dir --no-deps -d /tmp/dl six "
                                         "&& ls /tmp/dl")
    assert ".whl" in res.stdout
    assert ": CONNECT " in log, log[-2000:]


def test_baked_salt(lab, smoke):
    res = lab.run(smoke, ["/opt/salt/bin/salt-call", "--version"])
    assert res.ok and res.stdout.startswith("salt-call 3008.4 "), res


def test_each_suite_boots_with_its_release_and_the_baked_salt(lab, suite):
    node = f"salt{lab.SUITES[suite]}"  # salt12, salt13
    lab.boot(node, suite=suite)
    try:
        release = lab.run(node, ". /etc/os-release; echo $VERSION_CODENAME $VERSION_ID").stdout.split()
        assert release == [suite, lab.SUITES[suite]]
        assert lab.run(node, ["systemctl", "is-system-running"]).stdout.strip() == "running"
        assert lab.node_suite(node) == suite
        assert lab.salt_call(node, "test.ping") is True
        assert lab.salt_call(node, "grains.item", "osmajorrelease")["osmajorrelease"] == int(lab.SUITES[suite])
        res = lab.run(node, [f"{lab.SALT_VENV}/bin/python", "-c", "import argon2, zxcvbn, salt.version; "
                             "print(salt.version.__version__)"])
        assert res.ok and res.stdout.strip() == lab.SALT_VERSION, res
    finally:
        lab.remove(node)


def test_reboot_keeps_state(lab, smoke):
    lab.put(smoke, "/root/kept", "kept\n")
    lab.reboot(smoke)
    assert lab.run(smoke, ["cat", "/root/kept"]).stdout == "kept\n"
    assert lab.run(smoke, ["systemctl", "is-system-running"]).stdout.strip() == "running"


def test_stop_kills_a_node_that_hangs(lab):
    lab.boot("hang")
    try:
        lab.put("hang", "/etc/systemd/system/hang.service",
                "[Service]\nExecStart=/bin/sleep infinity\nExecStop=/bin/sleep infinity\nTimeoutStopSec=infinity\n")
        lab.run("hang", ["systemctl", "start", "hang.service"], check=True)
        lab.stop("hang", timeout=3)  # the poweroff never ends: the cgroup is killed
        assert lab.leader("hang") is None
        assert not lab.cgroup_pids("hang")
    finally:
        lab.remove("hang")
