"""
nginx limits login attempts (POSTs to the login page) per client address, with rate and
burst from pillar nginx:login_rate_limit; the rest of the site is not counted.
"""

from support.deployment import changed, failed, merge

LIMIT = {"rate": "1r/m", "burst": 5}  # slow enough that the loop never earns a new token
ATTEMPTS = 20


def test_login_burst_gets_429_while_the_site_serves(deployed):
    user = deployed.login()  # before the limit: this login is a POST too
    results = deployed.apply_pillar(merge(deployed.base, {"nginx": {"login_rate_limit": LIMIT}}))
    assert not failed(results)
    assert "jupyter-nginx-site" in changed(results)

    attacker = deployed.client("https")
    logins, pages = [], []
    for attempt in range(ATTEMPTS):
        assert not attacker.login(f"wrong-password-{attempt}")
        logins.append(attacker.last_login_status)
        # normal use meanwhile: pages and API calls with the login cookie
        for path in ("status", "contents", "kernelspecs", "sessions"):
            pages.append((path, user.api("GET", path).status_code))
        pages.append(("lab", user.session.get(user.url("lab"), timeout=30).status_code))

    # burst + 1 get through to Jupyter (which says no), one fewer when this address
    # logged in under the new rate's minute already (the user above); then nginx says 429
    allowed = logins.count(401)
    assert allowed in (LIMIT["burst"], LIMIT["burst"] + 1), logins
    assert logins == [401] * allowed + [429] * (ATTEMPTS - allowed), logins
    assert {status for _, status in pages} == {200}, [p for p in pages if p[1] != 200]
    # the right password from the same address waits too: that is the point
    late = deployed.client("https")
    assert not late.login(deployed.password) and late.last_login_status == 429
