"""jupyter_acme states with the execution module mocked: the order of one apply (serve the
challenge, obtain, renewal settings, deploy), what test=True predicts, what a failure says
and that it leaves the live certificate alone, and which lineages and copies absent removes."""

import pytest

from support.loader import load

SERVER = "https://198.51.100.1:14000/dir"
CERT = {"names": ["nb.example.org"], "serial": "abc123", "not_after": "2031-01-01T00:00:00Z",
        "not_before": "2026-01-01T00:00:00Z", "issuer": "Pebble Intermediate CA", "path": "/etc/letsencrypt/x"}
NEW = {**CERT, "serial": "def456", "not_after": "2031-06-01T00:00:00Z"}
KEY_TEXT = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"


def site(names=("nb.example.org",)):
    return {
        "name": "jupyter",
        "tls": {
            "certificate": "/etc/ssl/jupyter/jupyter.crt", "certificate_key": "/etc/ssl/jupyter/jupyter.key",
            "acme": {"lineage": "jupyter", "names": list(names), "server": SERVER,
                     "renewal_conf": "/etc/letsencrypt/renewal/jupyter.conf"},
        },
    }


def status(**kw):
    base = {"lineage": "jupyter", "exists": True, "owned": True, "certificate": CERT, "served": CERT,
            "server": SERVER, "reissue": [], "renewal": {}, "deploy": False}
    return {**base, **kw}


class Acme:
    """The execution module, scripted: status() answers from a list, the rest records."""

    def __init__(self, statuses, serve=None, obtain=None, deploy=None, lineages=None, delete=None):
        self.statuses, self.calls = list(statuses), []
        self.serve = serve or {"ok": True, "changed": {}, "served": "site", "message": "served"}
        self.got = obtain or {"ok": True, "seconds": 3.2, "output": "ok"}
        self.deployed = deploy or {"ok": True, "output": "deployed"}
        self.owned = lineages or {}
        self.deleted = delete or {"ok": True, "output": ""}
        self.sites = {"jupyter": site()}

    def status(self, s):
        self.calls.append("status")
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def record(self, name, value):
        def call(*args, **kwargs):
            self.calls.append((name, args[1:], kwargs) if name == "obtain" else name)
            return value
        return call

    def salt(self):
        return {
            "jupyter.settings": lambda **kw: {"sites": self.sites},
            "jupyter_acme.status": self.status,
            "jupyter_acme.serve_challenge": self.record("serve_challenge", self.serve),
            "jupyter_acme.obtain": self.record("obtain", self.got),
            "jupyter_acme.configure_renewal": self.record("configure_renewal", {"renew_before_expiry": "30 days"}),
            "jupyter_acme.deploy": self.record("deploy", self.deployed),
            "jupyter_acme.lineages": lambda: self.owned,
            "jupyter_acme.delete": self.record("delete", self.deleted),
        }


def state(acme, test=False):
    return load("_states", "jupyter_acme", salt=acme.salt(), opts={"test": test})


def test_first_issue_serves_the_challenge_then_obtains():
    acme = Acme([status(exists=False, owned=False, certificate=None, served=None, reissue=["no certificate yet"]),
                 status(certificate=NEW, served=NEW)],
                serve={"ok": True, "changed": {"/etc/nginx/sites-available/jupyter.conf": "create"},
                       "served": "challenge-only site", "message": "served"})
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is True, ret
    assert [c if isinstance(c, str) else c[0] for c in acme.calls] == ["status", "serve_challenge", "obtain", "status"]
    assert acme.calls[2][2] == {"force": False}  # a new lineage, not a re-issue
    assert ret["changes"]["nginx"]["served"] == "challenge-only site"
    assert ret["changes"]["certificate"]["old"] is None
    assert ret["changes"]["certificate"]["new"]["serial"] == "def456"
    assert ret["changes"]["certificate"]["reason"] == "no certificate yet"
    assert "def456" in ret["comment"] and "/etc/ssl/jupyter/jupyter.crt" in ret["comment"]


def test_a_current_certificate_changes_nothing():
    acme = Acme([status()])
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is True and ret["changes"] == {}
    assert "is current" in ret["comment"] and "abc123" in ret["comment"]
    assert "serve_challenge" not in acme.calls and not any(isinstance(c, tuple) for c in acme.calls)


def test_a_reissue_forces_certbot_and_reports_old_and_new():
    acme = Acme([status(reissue=["the names changed (add www.example.org)"]), status(certificate=NEW, served=NEW)])
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is True
    obtain = next(c for c in acme.calls if isinstance(c, tuple))
    assert obtain[2] == {"force": True}
    assert ret["changes"]["certificate"]["old"]["serial"] == "abc123"
    assert ret["changes"]["certificate"]["new"]["serial"] == "def456"


def test_renewal_settings_and_a_stale_copy_are_fixed_without_certbot():
    acme = Acme([status(renewal={"renew_before_expiry": "30 days"}), status(deploy=True), status()])
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is True
    assert acme.calls == ["status", "configure_renewal", "status", "deploy", "status"]
    assert ret["changes"]["renewal"] == {"renew_before_expiry": "30 days"}
    assert ret["changes"]["deployed"] == ["/etc/ssl/jupyter/jupyter.crt", "/etc/ssl/jupyter/jupyter.key"]


def test_test_mode_predicts_and_touches_nothing():
    acme = Acme([status(reissue=["it expires on 2031-01-01T00:00:00Z, within renew_before_days (30)"],
                        renewal={"renew_before_expiry": "30 days"})])
    ret = state(acme, test=True).certificate("jupyter")
    assert ret["result"] is None
    assert "re-issue a certificate for nb.example.org" in ret["comment"] and "within renew_before_days" in ret["comment"]
    assert "renew_before_expiry = 30 days" in ret["comment"]
    assert acme.calls == ["status"]
    quiet = Acme([status()])
    ret = state(quiet, test=True).certificate("jupyter")
    assert ret["result"] is True and ret["changes"] == {}


@pytest.mark.parametrize("cause, why", [
    ("port_80", "port 80 is unreachable: the CA could not connect to port 80 of this host"),
    ("dns", "DNS does not point here"),
    ("rate_limit", "the CA's rate limit was hit"),
    ("refused", "the CA refused to issue a certificate for nb.example.org"),
])
def test_a_failure_names_the_cause_and_keeps_the_live_certificate(cause, why):
    acme = Acme([status(reissue=["the names changed (add www.example.org)"])],
                obtain={"ok": False, "cause": cause, "why": why, "seconds": 1.0,
                        "details": "  Type:   connection\n  Detail: Connection refused", "output": "..."})
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is False
    assert why in ret["comment"]
    assert "keeps its certificate (serial abc123, valid until 2031-01-01T00:00:00Z)" in ret["comment"]
    assert "Detail: Connection refused" in ret["comment"]
    assert "configure_renewal" not in acme.calls and "deploy" not in acme.calls
    assert "certificate" not in ret["changes"]


def test_a_failed_first_issue_says_no_jupyter_is_served_without_tls():
    acme = Acme([status(exists=False, owned=False, certificate=None, served=None, reissue=["no certificate yet"])],
                obtain={"ok": False, "cause": "dns", "why": "DNS does not point here", "seconds": 1.0,
                        "details": "NXDOMAIN", "output": ""})
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is False and "ACME challenges only" in ret["comment"]


def test_nginx_not_serving_the_challenge_stops_before_certbot():
    acme = Acme([status(reissue=["no certificate yet"], exists=False, certificate=None, served=None)],
                serve={"ok": False, "changed": {}, "served": "challenge-only site",
                       "message": "nginx rejected the challenge-only site: duplicate default server"})
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is False and "duplicate default server" in ret["comment"]
    assert not any(isinstance(c, tuple) for c in acme.calls)


def test_a_lineage_the_formula_did_not_make_is_left_alone():
    acme = Acme([status(owned=False)])
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is False and "not made by the formula" in ret["comment"]
    assert acme.calls == ["status"]


def test_a_failed_deploy_fails_with_the_hooks_words():
    acme = Acme([status(deploy=True)], deploy={"ok": False, "output": "nginx -t failed with the new certificate"})
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is False and "nginx -t failed" in ret["comment"]


def test_a_site_without_acme_is_an_error():
    acme = Acme([status()])
    acme.sites = {"jupyter": {"name": "jupyter", "tls": None}}
    ret = state(acme).certificate("jupyter")
    assert ret["result"] is False and "has no jupyter:nginx:tls:acme" in ret["comment"]


def test_no_key_material_in_what_the_state_returns():
    acme = Acme([status(reissue=["no certificate yet"], exists=False, certificate=None, served=None),
                 status(certificate=NEW, served=NEW)])
    ret = state(acme).certificate("jupyter")
    assert "PRIVATE KEY" not in repr(ret) and KEY_TEXT not in repr(ret)


# ---------------------------------------------------------------------------
# absent


def test_absent_deletes_the_lineage_and_copies_no_site_reads(tmp_path):
    copies = [tmp_path / "old.crt", tmp_path / "old.key"]
    for path in copies:
        path.write_text("x")
    acme = Acme([status()], lineages={"old": {"copies": [str(p) for p in copies]}})
    # a current site reads old.crt (it moved to a certificate from pillar at the same path)
    acme.sites = {"jupyter": {"tls": {"certificate": str(copies[0]), "certificate_key": "/other.key"}}}
    ret = state(acme).absent("old")
    assert ret["result"] is True and "delete" in acme.calls
    assert copies[0].exists() and not copies[1].exists()
    assert ret["changes"] == {"lineage": "old", "files": [str(copies[1])]}


def test_absent_in_clean_removes_every_copy(tmp_path):
    copies = [tmp_path / "old.crt", tmp_path / "old.key"]
    for path in copies:
        path.write_text("x")
    acme = Acme([status()], lineages={"old": {"copies": [str(p) for p in copies]}})
    acme.sites = {"jupyter": {"tls": {"certificate": str(copies[0]), "certificate_key": str(copies[1])}}}
    ret = state(acme).absent("old", keep_used=False)
    assert ret["result"] is True and not any(p.exists() for p in copies)


def test_absent_leaves_what_is_not_the_formulas_and_predicts_in_test_mode(tmp_path):
    acme = Acme([status()], lineages={})
    ret = state(acme).absent("admins")
    assert ret["result"] is True and ret["changes"] == {} and "delete" not in acme.calls
    (tmp_path / "c").write_text("x")
    acme = Acme([status()], lineages={"old": {"copies": [str(tmp_path / "c")]}})
    acme.sites = {}
    ret = state(acme, test=True).absent("old")
    assert ret["result"] is None and "delete" not in acme.calls and (tmp_path / "c").exists()


def test_a_failed_certbot_delete_fails_and_keeps_the_copies(tmp_path):
    (tmp_path / "c").write_text("x")
    acme = Acme([status()], lineages={"old": {"copies": [str(tmp_path / "c")]}},
                delete={"ok": False, "output": "certbot: error"})
    acme.sites = {}
    ret = state(acme).absent("old")
    assert ret["result"] is False and (tmp_path / "c").exists()
