"""test=True on a deployed target: nothing changes (files, accounts, pids), and each state
that would act says so by its result (None), with the changes it would make."""

from hardening.common import TREES, assert_same_trees
from support.deployment import merge


def test_test_mode_changes_nothing_and_predicts_the_watch_graph(deployed):
    target = deployed.target
    trees, jupyter, nginx = target.tree_signature(TREES), deployed.status(), target.nginx_pids()
    pillar = merge(deployed.base, {
        "nginx": {"client_max_body_size": "256m"},
        "supervisor": {"environment": {"TZ": "UTC"}},
        "config": {"MappingKernelManager": {"cull_idle_timeout": 3600}},
    })
    results = deployed.apply_pillar(pillar, "test=True")
    assert_same_trees(trees, target.tree_signature(TREES))
    assert (deployed.status(), target.nginx_pids()) == (jupyter, nginx)

    predicted = {ret["__id__"]: ret for ret in results.values() if ret["result"] is None}
    assert set(predicted) == {
        "jupyter-config-file", "jupyter-supervisor-program-file", "jupyter-supervisor-program",
        "jupyter-nginx-site", "jupyter-nginx-service",
    }, {key: ret["comment"] for key, ret in predicted.items()}
    assert predicted["jupyter-config-file"]["changes"]["settings"] == ["MappingKernelManager.cull_idle_timeout"]
    assert "client_max_body_size 256m;" in predicted["jupyter-nginx-site"]["changes"]["diff"]
    assert 'TZ="UTC"' in predicted["jupyter-supervisor-program-file"]["changes"]["diff"]
    # the host still has the base pillar's state
    deployed.write_pillar(deployed.base)
    deployed.applied_base = True
