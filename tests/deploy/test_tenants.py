"""Tenant rule files in the deploy bundle, both ways they reach the server.

- gitops: the overlays as shipped, one ConfigMap `egress-authz-tenants` generated from deploy/tenants/.
- projected: an overlay with deploy/components/tenants-projected, one ConfigMap per team combined by a
  projected volume.

Offline checks run on the renders and on mutated copies (to show each check catches what it is for); the
validate and flag checks run the egress-authz binary (EGRESS_AUTHZ_BIN).
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest

import checks
import tenant_checks as tc
import validation as schemas
from conftest import DEPLOY, OVERLAYS, kustomize_with_components, load_yaml_docs, rendered
from test_admin_port import readme_section
from test_manifests import require_binary

TENANTS = DEPLOY / "tenants"
RULES = DEPLOY / "rules"
PROJECTED = DEPLOY / "components" / "tenants-projected"
CODEOWNERS = TENANTS / "CODEOWNERS.example"
PLATFORM_OWNER = "@org/platform-team"
GITOPS_CONFIGMAP = "egress-authz-tenants"
TEAM_CONFIGMAPS = {"egress-authz-tenant-payments", "egress-authz-tenant-web"}
TENANT_LABEL = "egress-authz.io/tenant"
SECTION = "Delegating rules to teams"
VARIANTS = ("gitops", "projected")
CASES = [(variant, overlay) for variant in VARIANTS for overlay in OVERLAYS]


def case_id(case) -> str:
    return "-".join(case)


def tenant_files() -> list[Path]:
    return sorted(p for p in TENANTS.iterdir() if p.suffix in tc.TENANT_FILE_SUFFIXES)


_projected_cache: dict[str, list[dict]] = {}


def render(variant: str, overlay: str, tmp_path_factory) -> list[dict]:
    if variant == "gitops":
        return rendered(overlay)
    if overlay not in _projected_cache:
        _projected_cache[overlay] = kustomize_with_components(
            tmp_path_factory.mktemp(f"projected-{overlay}"), DEPLOY / "overlays" / overlay, [PROJECTED])
    return _projected_cache[overlay]


def mutated(variant: str, overlay: str, tmp_path_factory) -> list[dict]:
    return copy.deepcopy(render(variant, overlay, tmp_path_factory))


def tenant_volume(objs: list[dict]) -> dict:
    _, volume, problems = tc.tenant_mount(objs)
    assert problems == [] and volume is not None, problems
    return volume


def tenant_container(objs: list[dict]) -> dict:
    return checks.egress_authz_container(checks.server_deployment(objs))


# ------------------------------------------------------------------------------------- the tenant files

def test_tenants_generator_lists_every_tenant_file():
    """kustomize has no globs: a tenant file added to deploy/tenants/ but not to its Kustomization is lost."""
    files = [p.name for p in tenant_files()]
    assert files, "no example tenant files"
    (kustomization,) = load_yaml_docs(TENANTS / "Kustomization")
    (gen,) = kustomization["configMapGenerator"]
    assert gen["name"] == GITOPS_CONFIGMAP
    assert sorted(Path(f.split("=", 1)[-1]).name for f in gen["files"]) == files
    assert gen["options"]["disableNameSuffixHash"] is True, "a hash suffix would restart pods instead of hot reload"
    (cm,) = checks.find(rendered("tenants"), "ConfigMap")
    assert sorted(cm["data"]) == files
    # `--tenant-rules deploy/tenants` must not see the kustomization as the file of a namespace.
    assert not any(p.name.startswith("kustomization.") for p in TENANTS.iterdir())


@pytest.mark.parametrize("path", tenant_files(), ids=lambda p: p.name)
def test_example_tenant_file_holds_only_rules(path):
    assert tc.tenant_of_key(path.name) is not None, f"{path.name} is not <namespace>.yaml|yml"
    assert tc.check_tenant_file(path.read_text()) == []


def test_tenant_file_check_catches_platform_settings():
    text = (TENANTS / "payments.yaml").read_text()
    assert any("defaultAction" in p for p in tc.check_tenant_file("defaultAction: ALLOW\n" + text))
    assert any("'tenants'" in p for p in tc.check_tenant_file(text + "tenants:\n  payments: {maxRules: 99}\n"))
    assert any("rules" in p for p in tc.check_tenant_file("rules: {name: x}\n"))
    assert tc.check_tenant_file(text + "---\nrules: []\n")


def test_tenant_file_names_are_namespace_names():
    assert [tc.tenant_of_key(k) for k in ("payments.yaml", "web.yml", "team-a.yaml", "a" * 63 + ".yaml")] == [
        "payments", "web", "team-a", "a" * 63]
    for bad in ("Payments.yaml", "payments.json", "team_a.yaml", "-web.yaml", "a" * 64 + ".yaml", "x/web.yaml",
                "payments.yaml.bak", ".yaml"):
        assert tc.tenant_of_key(bad) is None, bad


def test_guardrails_file_holds_only_the_tenants_section():
    """A platform file of its own, with only `tenants:`, covering every example tenant (or by `defaults`)."""
    (kustomization,) = load_yaml_docs(RULES / "Kustomization")
    assert "guardrails.yaml" in kustomization["configMapGenerator"][0]["files"]
    (guardrails,) = load_yaml_docs(RULES / "guardrails.yaml")
    assert set(guardrails) == {"tenants"}
    entries = guardrails["tenants"]
    for path in tenant_files():
        namespace = tc.tenant_of_key(path.name)
        assert namespace in entries or "defaults" in entries, f"no guardrails for {namespace}"
    # Whether the rules stay within them is the server's check: test_mounted_tenant_files_pass_egress_authz_validate.


# --------------------------------------------------------------------------------------- both variants

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tenant_dir_is_a_directory_mount_at_the_flag(case, tmp_path_factory):
    objs = render(*case, tmp_path_factory)
    assert tc.check_tenant_mount(objs) == []
    mount, _, _ = tc.tenant_mount(objs)
    assert mount["mountPath"] == checks.flag(tenant_container(objs), tc.TENANT_FLAG)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tenant_configmap_keys_are_namespace_files(case, tmp_path_factory):
    assert tc.check_tenant_configmap_keys(render(*case, tmp_path_factory)) == []


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_platform_rules_stay_mounted(case, tmp_path_factory):
    assert checks.check_rules_mount(render(*case, tmp_path_factory)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_projected_variant_objects_validate(overlay, tmp_path_factory):
    """The shipped renders are validated in test_manifests.py; this is the one the component adds."""
    for obj in render("projected", overlay, tmp_path_factory):
        if schemas.is_istio(obj):
            assert schemas.istio_errors(obj) == []
        elif (schemas.group_of(obj), obj["kind"]) not in schemas.HAND_CHECKED:
            for version in schemas.KUBERNETES_VERSIONS:
                assert schemas.kubernetes_errors(obj, version) == []


def test_gitops_variant_mounts_the_generated_configmap():
    for overlay in OVERLAYS:
        objs = rendered(overlay)
        assert tenant_volume(objs)["configMap"] == {"name": GITOPS_CONFIGMAP}, overlay
        cm = checks.one(objs, "ConfigMap", GITOPS_CONFIGMAP)
        server = checks.server_deployment(objs)
        assert cm["metadata"]["namespace"] == server["metadata"]["namespace"], overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_projected_volume_lists_the_team_configmaps(overlay, tmp_path_factory):
    objs = render("projected", overlay, tmp_path_factory)
    volume = tenant_volume(objs)
    assert "configMap" not in volume
    assert {s["name"] for s in tc.tenant_sources(volume)} == TEAM_CONFIGMAPS
    assert tc.check_projected_sources(objs, volume) == []
    # The single generated ConfigMap is left out; each team's is there, empty: the bundle never owns a team's data.
    assert not checks.find(objs, "ConfigMap", GITOPS_CONFIGMAP)
    for name in TEAM_CONFIGMAPS:
        cm = checks.one(objs, "ConfigMap", name)
        assert "data" not in cm and "binaryData" not in cm, name
        assert name == f"egress-authz-tenant-{cm['metadata']['labels'][TENANT_LABEL]}"
    assert tc.check_team_rbac(objs) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_projected_component_changes_only_the_tenant_wiring(overlay, tmp_path_factory):
    """Everything but the tenant volume, the tenant ConfigMaps and the teams' RBAC is the overlay unchanged."""
    def rest(objs):
        label, value = tc.COMPONENT_LABEL
        tenant_volume_name = tenant_volume(objs)["name"]
        out = []
        for obj in copy.deepcopy(objs):
            if obj["metadata"].get("labels", {}).get(label) == value:
                continue
            if obj["kind"] == "Deployment":
                volumes = obj["spec"]["template"]["spec"]["volumes"]
                volumes[:] = [v for v in volumes if v["name"] != tenant_volume_name]
            out.append(obj)
        return sorted(out, key=lambda o: (o["kind"], o["metadata"]["name"]))

    assert rest(render("projected", overlay, tmp_path_factory)) == rest(rendered(overlay))


# ------------------------------------------------------------------------------------------ CODEOWNERS

def codeowners_inputs():
    tenant = [f"deploy/tenants/{p.name}" for p in tenant_files()]
    platform = [f"deploy/rules/{p.name}" for p in sorted(RULES.iterdir())]
    platform += [f"deploy/tenants/{n}" for n in ("Kustomization", CODEOWNERS.name)]
    return tenant, platform


def test_codeowners_example_names_every_tenant_file():
    tenant, platform = codeowners_inputs()
    assert "deploy/rules/guardrails.yaml" in platform
    assert tc.check_codeowners(CODEOWNERS.read_text(), tenant, platform, PLATFORM_OWNER) == []


def test_codeowners_check_catches_gaps():
    tenant, platform = codeowners_inputs()
    text = CODEOWNERS.read_text()

    def problems(changed):
        assert changed != text
        return tc.check_codeowners(changed, tenant, platform, PLATFORM_OWNER)

    # A tenant file without its line falls back to the platform team.
    assert any("web.yaml" in p for p in problems(text.replace("/deploy/tenants/web.yaml", "/deploy/tenants/wbe.yaml")))
    # A broader line below hands every tenant file, and the Kustomization, to one team.
    broad = problems(text + "/deploy/tenants/ @org/web-team\n")
    assert any("payments.yaml" in p for p in broad) and any("Kustomization" in p for p in broad)
    # The guardrails shared with a team.
    shared = text + "/deploy/rules/guardrails.yaml @org/platform-team @org/payments-team\n"
    assert any("guardrails.yaml" in p for p in problems(shared))


# ---------------------------------------------------------------------------- the checks catch breakage

def test_catches_tenant_mounts_that_break_reload_or_scoping(tmp_path_factory):
    def problems(variant, overlay, change):
        objs = mutated(variant, overlay, tmp_path_factory)
        change(objs)
        return tc.check_tenant_mount(objs)

    def mount_of(objs):
        mount, _, _ = tc.tenant_mount(objs)
        return mount

    def set_flag(objs, value):
        c = tenant_container(objs)
        c["args"] = [f"--tenant-rules={value}" if a.startswith("--tenant-rules") else a for a in c["args"]]

    def nest_in_rules(objs):
        mount_of(objs)["mountPath"] = "/etc/egress-authz/rules/tenants"
        set_flag(objs, "/etc/egress-authz/rules/tenants")

    def drop_flag(objs):
        c = tenant_container(objs)
        c["args"] = [a for a in c["args"] if not a.startswith("--tenant-rules")]

    for variant, overlay in CASES:
        assert any("subPath" in p for p in problems(
            variant, overlay, lambda o: mount_of(o).update(subPath="payments.yaml")))
        assert any("not the path" in p for p in problems(variant, overlay, lambda o: set_flag(o, "/etc/tenants")))
        assert any("overlap" in p for p in problems(variant, overlay, nest_in_rules))
        assert any("readOnly" in p for p in problems(variant, overlay, lambda o: mount_of(o).pop("readOnly")))
        assert any("no --tenant-rules" in p for p in problems(variant, overlay, drop_flag))
    items = [{"key": "payments.yaml", "path": "payments.yaml"}]
    assert any("items" in p for p in problems(
        "gitops", "standalone", lambda o: tenant_volume(o)["configMap"].update(items=items)))


def test_catches_tenant_configmap_keys_that_are_not_namespace_files(tmp_path_factory):
    for bad in ("Payments.yaml", "payments.json", "team_a.yaml", "a" * 64 + ".yaml"):
        objs = mutated("gitops", "sidecar", tmp_path_factory)
        checks.one(objs, "ConfigMap", GITOPS_CONFIGMAP)["data"][bad] = "rules: []\n"
        assert any(repr(bad) in p for p in tc.check_tenant_configmap_keys(objs)), bad
    objs = mutated("projected", "standalone", tmp_path_factory)
    checks.one(objs, "ConfigMap", "egress-authz-tenant-web")["data"] = {"web.yaml": "", "notes.txt": ""}
    assert any("'notes.txt'" in p for p in tc.check_tenant_configmap_keys(objs))


def test_catches_projected_sources_that_break_isolation(tmp_path_factory):
    def problems(overlay, change):
        objs = mutated("projected", overlay, tmp_path_factory)
        volume = tenant_volume(objs)
        change(objs, volume["projected"]["sources"])
        return tc.check_projected_sources(objs, volume)

    for overlay in OVERLAYS:
        assert any("not optional" in p for p in problems(overlay, lambda o, s: s[0]["configMap"].pop("optional")))
        assert any("pin exactly one item" in p for p in problems(overlay, lambda o, s: s[0]["configMap"].pop("items")))
        # The payments team's ConfigMap providing web's file.
        hijack = [{"key": "web.yaml", "path": "web.yaml"}]
        hijacked = problems(overlay, lambda o, s: s[0]["configMap"].update(items=hijack))
        assert any("namespace web" in p for p in hijacked) and any("several sources" in p for p in hijacked)
        renamed = [{"key": "payments.yaml", "path": "payments.yml.bak"}]
        assert any("not <namespace>" in p for p in problems(overlay, lambda o, s: s[0]["configMap"].update(
            items=renamed)))
        # A team ConfigMap shipped without a source, or a source for a ConfigMap nobody ships.
        assert any("not the tenant ConfigMaps" in p for p in problems(overlay, lambda o, s: s.pop()))
        assert any("not the tenant ConfigMaps" in p for p in problems(overlay, lambda o, s: s.append(
            {"configMap": {"name": "egress-authz-tenant-ops", "optional": True,
                           "items": [{"key": "ops.yaml", "path": "ops.yaml"}]}})))
        assert any("non-ConfigMap" in p for p in problems(overlay, lambda o, s: s.append(
            {"secret": {"name": "egress-authz-tenant-secret"}})))


def test_catches_team_rbac_that_reaches_further(tmp_path_factory):
    def problems(change):
        objs = mutated("projected", "standalone", tmp_path_factory)
        change(objs)
        return tc.check_team_rbac(objs)

    def role(objs):
        return checks.one(objs, "Role", "egress-authz-tenant-payments")["rules"][0]

    assert any("'create'" in p for p in problems(lambda o: role(o)["verbs"].append("create")))
    assert any("'list'" in p for p in problems(lambda o: role(o)["verbs"].append("list")))
    assert any("not pinned" in p for p in problems(lambda o: role(o).pop("resourceNames")))
    assert any("not pinned" in p for p in problems(lambda o: role(o)["resourceNames"].append(
        "egress-authz-tenant-web")))
    assert any("more than ConfigMaps" in p for p in problems(lambda o: role(o)["resources"].append("secrets")))
    assert any("not a team's tenant Role" in p for p in problems(lambda o: checks.one(
        o, "RoleBinding", "egress-authz-tenant-web")["roleRef"].update(kind="ClusterRole", name="edit")))
    assert any("not the server's namespace" in p for p in problems(lambda o: checks.one(
        o, "ConfigMap", "egress-authz-tenant-web")["metadata"].update(namespace="web")))


# ------------------------------------------------------------------------------------------------ docs

def test_readme_section_names_the_alert_and_the_metric():
    section = readme_section(SECTION)
    (rule,) = load_yaml_docs(DEPLOY / "components" / "alerts" / "prometheusrule.yaml")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "EgressAuthzTenantRulesRejected" in section
    assert "egress_authz_tenant_config_valid" in alerts["EgressAuthzTenantRulesRejected"]["expr"]
    assert "egress_authz_tenant_config_valid" in section
    for path in ("deploy/tenants/", "deploy/components/tenants-projected", "CODEOWNERS.example", "guardrails.yaml"):
        assert path in section, path


# ------------------------------------------------------------------------ with the egress-authz binary

def serve_help() -> str:
    proc = subprocess.run([str(require_binary()), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_manifest_flags_are_serve_flags(case, tmp_path_factory):
    """Every flag the manifests pass is one `serve` knows (a flag it does not know stops the server)."""
    args = tenant_container(render(*case, tmp_path_factory))["args"]
    assert args[0] == "serve"
    flags = sorted({a.split("=", 1)[0] for a in args[1:] if a.startswith("--")})
    assert f"--{tc.TENANT_FLAG}" in flags
    known = serve_help()
    assert [f for f in flags if f not in known] == []


def test_readme_section_names_the_server_flags():
    section = readme_section(SECTION)
    assert "--tenant-rules" in section and "EGRESS_AUTHZ_TENANT_RULES" in section
    known = serve_help()
    assert [n for n in ("--tenant-rules", "EGRESS_AUTHZ_TENANT_RULES") if n not in known] == []


def team_filled(objs: list[dict]) -> list[dict]:
    """The projected variant's ConfigMaps as the teams fill them: each with its example file."""
    objs = copy.deepcopy(objs)
    for cm in tc.tenant_configmaps(objs):
        tenant = cm["metadata"]["labels"][TENANT_LABEL]
        cm["data"] = {f"{tenant}.yaml": (TENANTS / f"{tenant}.yaml").read_text()}
    return objs


def lay_out(objs: list[dict], volume: dict, directory: Path) -> list[str]:
    """Write a ConfigMap or projected volume's files as the kubelet does; returns the file names."""
    directory.mkdir()
    by_name = {c["metadata"]["name"]: c for c in checks.find(objs, "ConfigMap")}
    for source in tc.tenant_sources(volume):
        data = by_name[source["name"]].get("data", {})
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] in data:
                (directory / item["path"]).write_text(data[item["key"]])
    return sorted(p.name for p in directory.iterdir())


def validate(rules_dir: Path, tenant_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(require_binary()), "validate", str(rules_dir), "--tenant-rules", str(tenant_dir)],
                          capture_output=True, text=True, timeout=60)


def mounted_dirs(objs: list[dict], tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """The rules and tenant directories a pod of this render sees."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for key, text in checks.one(objs, "ConfigMap", "egress-authz-rules")["data"].items():
        (rules_dir / key).write_text(text)
    tenant_dir = tmp_path / "tenants"
    return rules_dir, tenant_dir, lay_out(objs, tenant_volume(objs), tenant_dir)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_mounted_tenant_files_pass_egress_authz_validate(case, tmp_path, tmp_path_factory):
    """The platform rules, guardrails included, and every tenant file as mounted: all accepted."""
    objs = render(*case, tmp_path_factory)
    if case[0] == "projected":
        objs = team_filled(objs)
    rules_dir, tenant_dir, files = mounted_dirs(objs, tmp_path)
    assert files == [p.name for p in tenant_files()]
    proc = validate(rules_dir, tenant_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("change", ["another-namespace", "beyond-guardrails"])
def test_validate_rejects_a_tenant_file_reaching_outside(change, tmp_path):
    """What the server refuses: a rule naming another namespace's account, a host outside the guardrails."""
    objs = copy.deepcopy(rendered("standalone"))
    cm = checks.one(objs, "ConfigMap", GITOPS_CONFIGMAP)
    text = cm["data"]["payments.yaml"]
    broken = {
        "another-namespace": text.replace("serviceAccounts: [payments/checkout]", "serviceAccounts: [web/frontend]"),
        "beyond-guardrails": text.replace("hosts: [api.stripe.com]", "hosts: [api.stripe.com, example.org]"),
    }[change]
    assert broken != text
    cm["data"]["payments.yaml"] = broken
    rules_dir, tenant_dir, _ = mounted_dirs(objs, tmp_path)
    proc = validate(rules_dir, tenant_dir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "payments.yaml" in proc.stdout + proc.stderr
