"""
Nothing broken goes live (issue 10): the formula's nginx files are tested by `nginx -t`
inside the real, full configuration before they are kept, and every apply fails while
the full configuration fails `nginx -t`, saying why in nginx's own words.

- A site that nginx rejects on its own (a bogus directive): refused, files put back.
- A site that is fine alone but breaks the FULL configuration: moving ours onto a port
  where a foreign site is the default_server makes two default servers. The apply
  fails with nginx's message, the old site still serves (login + kernel through nginx),
  a second apply fails the same way, and re-applying the fixed pillar succeeds.
- A foreign site that breaks `nginx -t` while the formula's files did not change: the
  apply fails with nginx's words; once it is gone, the apply succeeds again.
"""

import hashlib

import pytest

from hardening.common import FOREIGN_PORT, SITE_FILES, TLS_FILES
from support.deployment import changed, failed, merge

FOREIGN_SITE = "/etc/nginx/sites-enabled/jft-foreign.conf"
FOREIGN_DEFAULT = f"""# a site that is not the formula's: the catch-all of port {FOREIGN_PORT}
server {{
    listen {FOREIGN_PORT} default_server;
    server_name foreign.invalid;
    return 200 "foreign\\n";
}}
"""
FOREIGN_BROKEN = "# a site that is not the formula's, broken by hand\nserver {\n    bogus_foreign_directive on;\n}\n"


def digests(target):
    return {path: hashlib.sha256((target.read(path) or "").encode()).hexdigest() for path in SITE_FILES + TLS_FILES}


@pytest.fixture
def foreign_site(deployed):
    """put(text): a foreign site in sites-enabled (nginx not reloaded); removed after the test."""
    target = deployed.target

    def put(text):
        target.write(FOREIGN_SITE, text, mode="0644")

    yield put
    target.remove(FOREIGN_SITE)
    if target.nginx_pids()[0]:
        target.nginx_reload()


def assert_refused_and_still_serving(dep, results, files, master, workers, words):
    errors = failed(results)
    assert set(errors) >= {"jupyter-nginx-site"}, errors
    assert all(word in errors["jupyter-nginx-site"] for word in words), errors["jupyter-nginx-site"]
    assert "jupyter-nginx-service" not in changed(results)
    assert digests(dep.target) == files, "a rejected site went live on disk"
    assert dep.target.nginx_pids() == (master, workers), "nginx was reloaded or restarted"
    assert dep.serves(), "the previous site no longer serves login + kernel"


def test_site_that_nginx_rejects_never_goes_live(deployed):
    target = deployed.target
    files, (master, workers) = digests(target), target.nginx_pids()
    results = deployed.apply_pillar(merge(deployed.base, {"nginx": {"extra_directives": ["bogus_directive on;"]}}))
    assert_refused_and_still_serving(deployed, results, files, master, workers,
                                     ['unknown directive "bogus_directive"'])
    results = deployed.apply_pillar(deployed.base)
    assert not failed(results) and not changed(results), (failed(results), changed(results))
    deployed.applied_base = True


def test_a_site_that_breaks_the_full_config_never_goes_live(deployed, foreign_site):
    target = deployed.target
    foreign_site(FOREIGN_DEFAULT)
    assert target.nginx_reload().ok  # the foreign site is live
    files, (master, workers) = digests(target), target.nginx_pids()
    # valid alone, but two default servers on one port in the whole configuration
    moved = merge(deployed.base, {"nginx": {"listen": FOREIGN_PORT, "default_server": True}})
    words = ["duplicate default server", f":{FOREIGN_PORT}"]
    for attempt in ("first", "second"):
        results = deployed.apply_pillar(moved)
        assert_refused_and_still_serving(deployed, results, files, master, workers, words)
        assert target.run(["nginx", "-t"]).ok, f"{attempt} failed apply left a config nginx rejects"
    # the fixed pillar applies, and the foreign site was never touched
    results = deployed.apply_pillar(deployed.base)
    assert not failed(results), failed(results)
    deployed.applied_base = True
    assert target.read(FOREIGN_SITE) == FOREIGN_DEFAULT
    assert deployed.serves()


def test_every_apply_fails_while_nginx_t_fails(deployed, foreign_site):
    target = deployed.target
    files, (master, workers) = digests(target), target.nginx_pids()
    foreign_site(FOREIGN_BROKEN)  # the formula's files do not change
    for _ in range(2):
        results = deployed.apply()
        assert_refused_and_still_serving(deployed, results, files, master, workers,
                                         ['unknown directive "bogus_foreign_directive"', FOREIGN_SITE])
    target.remove(FOREIGN_SITE)
    results = deployed.apply()
    assert not failed(results) and not changed(results), (failed(results), changed(results))
