"""test=True on a target where this deployment does not exist yet: a prediction, no
failure, no change (no file, no account, no program, no site)."""

from support.deployment import Deployment, failed, first_json, own_pillar

PILLAR = own_pillar("dry", 8182, 8922, "dry-run-Quartz-71-lantern")
CREATED = ["/opt/jft-dry", "/srv/jft-dry", "/var/log/jft-dry", "/etc/jft-dry", "/var/lib/jft-dry",
           "/etc/supervisor/conf.d/jft-dry.conf", "/etc/nginx/sites-available/jft-dry.conf",
           "/etc/nginx/sites-enabled/jft-dry.conf"]


def test_dry_run_on_a_fresh_deployment_predicts_and_changes_nothing(target):
    with target.lock():
        dry = Deployment(target, "dry", PILLAR)
        try:
            nginx = target.nginx_pids()
            # the quick start's own path: ./deploy.sh FILE test=True
            proc = dry.deploy("test=True", "--out=json")
            assert proc.ok, proc
            assert not target.run(["readlink", f"{dry.etc}/pillar/jupyter.sls"]).ok  # a dry run is not remembered
            results = first_json(proc.stdout)["local"]
            assert not failed(results), failed(results)
            predicted = {ret["__id__"] for ret in results.values() if ret["result"] is None}
            assert {"jupyter-package-user", "jupyter-package-venv", "jupyter-config-file",
                    "jupyter-supervisor-program-file", "jupyter-nginx-site"} <= predicted
            assert [p for p in CREATED if target.exists(p)] == []
            assert not target.run(["getent", "passwd", PILLAR["user"]]).ok
            assert target.supervisor_status(PILLAR["supervisor"]["program"])[0] != "RUNNING"
            assert target.nginx_pids() == nginx  # not even a reload
        finally:
            dry.forget()  # nothing else was made
