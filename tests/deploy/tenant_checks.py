"""Checks for the tenant rule files in the deploy bundle: how they reach the server, and who owns them.

Like checks.py, each check takes plain objects (or file text) and returns a list of problems, empty when the
wiring holds, so tests can run it on the real renders and on mutated copies.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import yaml

from checks import egress_authz_container, find, flag, server_deployment

TENANT_FLAG = "tenant-rules"
# A Kubernetes namespace name (RFC 1123 label): the server derives the tenant from the file name.
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
NAMESPACE_MAX_LEN = 63
TENANT_FILE_SUFFIXES = (".yaml", ".yml")
# What a tenant file may hold: everything else (defaultAction, trustDomains, tenants, ...) is the platform's.
TENANT_FILE_KEYS = {"rules"}
# Label shared by everything that carries tenant rules (ConfigMaps, and the projected variant's RBAC).
COMPONENT_LABEL = ("app.kubernetes.io/component", "tenant-rules")
# What a team may do to its own ConfigMap: read and change it, not create, delete or list (which would show
# the other teams' files).
TEAM_VERBS = {"get", "update", "patch"}


def tenant_of_key(key: str) -> str | None:
    """The namespace a tenant file name belongs to, or None if the name is not `<namespace>.yaml|yml`."""
    path = PurePosixPath(key)
    if path.suffix not in TENANT_FILE_SUFFIXES or len(path.parts) != 1:
        return None
    stem = path.stem
    if len(stem) > NAMESPACE_MAX_LEN or not NAMESPACE_NAME.fullmatch(stem):
        return None
    return stem


def within(path: str, directory: str) -> bool:
    """True if `path` is `directory` or below it (mount paths are absolute and normalised by the kubelet)."""
    return PurePosixPath(path) == PurePosixPath(directory) or PurePosixPath(directory) in PurePosixPath(path).parents


def tenant_mount(objs: list[dict]) -> tuple[dict | None, dict | None, list[str]]:
    """(volume mount, volume) behind --tenant-rules, and problems finding them."""
    dep = server_deployment(objs)
    container = egress_authz_container(dep)
    directory = flag(container, TENANT_FLAG)
    if not directory:
        return None, None, [f"no --{TENANT_FLAG} flag"]
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory.rstrip("/")]
    if len(mounts) != 1:
        return None, None, [f"--{TENANT_FLAG} {directory} is not the path of exactly one volume mount"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}
    volume = volumes.get(mounts[0]["name"])
    if volume is None:
        return mounts[0], None, [f"mount {mounts[0]['name']} has no volume"]
    return mounts[0], volume, []


def check_tenant_mount(objs: list[dict]) -> list[str]:
    """The tenant directory is a read-only directory mount of ConfigMaps, apart from the rules directory."""
    mount, volume, problems = tenant_mount(objs)
    if mount is None or volume is None:
        return problems
    container = egress_authz_container(server_deployment(objs))
    if "subPath" in mount or "subPathExpr" in mount:
        problems.append("tenant rules mounted with subPath: ConfigMap updates would never reach the pod")
    if not mount.get("readOnly"):
        problems.append("tenant rules mount is not readOnly")
    rules = flag(container, "rules")
    if rules and (within(mount["mountPath"], rules) or within(rules, mount["mountPath"])):
        problems.append(f"tenant directory {mount['mountPath']} and rules directory {rules} overlap: "
                        "a tenant file there would be read as a platform file")
    if "configMap" in volume:
        if volume["configMap"].get("items"):
            problems.append("tenant ConfigMap volume lists items: new tenant files would not appear")
    elif "projected" in volume:
        problems += check_projected_sources(objs, volume)
    else:
        problems.append(f"volume {volume['name']} is neither a ConfigMap nor a projected volume")
    return problems


def tenant_sources(volume: dict) -> list[dict]:
    """The ConfigMap references a tenant volume reads: the volume's own, or each projected source's."""
    if "configMap" in volume:
        return [volume["configMap"]]
    return [s["configMap"] for s in volume.get("projected", {}).get("sources", []) if "configMap" in s]


def check_projected_sources(objs: list[dict], volume: dict) -> list[str]:
    """Every tenant ConfigMap of the render is a source; each is optional and adds its own file only."""
    problems = []
    sources = volume["projected"].get("sources", [])
    others = [s for s in sources if "configMap" not in s]
    if others:
        problems.append(f"projected tenant volume has non-ConfigMap sources: {others}")
    names = [s["configMap"]["name"] for s in sources if "configMap" in s]
    shipped = {c["metadata"]["name"] for c in tenant_configmaps(objs)}
    if sorted(names) != sorted(shipped):
        problems.append(f"projected sources {sorted(names)} are not the tenant ConfigMaps {sorted(shipped)}")
    paths = []
    for source in (s["configMap"] for s in sources if "configMap" in s):
        name = source["name"]
        if source.get("optional") is not True:
            problems.append(f"source {name} is not optional: without it no new pod starts, for every team")
        items = source.get("items") or []
        if len(items) != 1:
            problems.append(f"source {name} does not pin exactly one item: its team could add any file")
        for item in items:
            tenant = tenant_of_key(item["path"])
            if item["key"] != item["path"] or tenant is None:
                problems.append(f"source {name}: item {item['key']} -> {item['path']} is not <namespace>.yaml|yml "
                                "under its own name")
            elif not name.endswith(f"-{tenant}"):
                problems.append(f"source {name} provides the file of namespace {tenant}")
            paths.append(item["path"])
    duplicated = sorted({p for p in paths if paths.count(p) > 1})
    if duplicated:
        problems.append(f"several sources project {duplicated}: one team's file would hide another's")
    return problems


def tenant_configmaps(objs: list[dict]) -> list[dict]:
    key, value = COMPONENT_LABEL
    return [c for c in find(objs, "ConfigMap") if c["metadata"].get("labels", {}).get(key) == value]


def check_tenant_configmap_keys(objs: list[dict]) -> list[str]:
    """Every key of every ConfigMap the tenant volume reads is a tenant file name: `<namespace>.yaml|yml`.

    A key that is not would be a file the server rejects (for that file alone), or one it never reads.
    """
    _, volume, problems = tenant_mount(objs)
    if volume is None:
        return problems
    by_name = {c["metadata"]["name"]: c for c in find(objs, "ConfigMap")}
    for source in tenant_sources(volume):
        cm = by_name.get(source["name"])
        if cm is None:
            if not source.get("optional"):
                problems.append(f"tenant ConfigMap {source['name']} is not in the render")
            continue
        keys = [*cm.get("data", {}), *cm.get("binaryData", {})]
        problems += [f"ConfigMap {source['name']}: key {k!r} is not <namespace>.yaml|yml" for k in keys
                     if tenant_of_key(k) is None]
    return problems


def check_tenant_file(text: str) -> list[str]:
    """A tenant file holds one mapping with only `rules:`, a list; the settings are the platform's."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        return [f"not YAML: {err}"]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return ["not a single YAML mapping"]
    (doc,) = docs
    problems = [f"top-level key {k!r}: only {sorted(TENANT_FILE_KEYS)} belongs in a tenant file"
                for k in doc if k not in TENANT_FILE_KEYS]
    if not isinstance(doc.get("rules"), list):
        problems.append("no `rules:` list")
    return problems


def check_team_rbac(objs: list[dict]) -> list[str]:
    """Each team's Role reaches its own tenant ConfigMap only, and each binding grants such a Role."""
    problems = []
    key, value = COMPONENT_LABEL
    tenant_cms = {c["metadata"]["name"] for c in tenant_configmaps(objs)}
    roles = {r["metadata"]["name"]: r for r in find(objs, "Role") if r["metadata"].get("labels", {}).get(key) == value}
    for name, role in roles.items():
        for rule in role.get("rules", []):
            names = rule.get("resourceNames", [])
            if rule.get("apiGroups") != [""] or rule.get("resources") != ["configmaps"]:
                problems.append(f"Role {name} grants more than ConfigMaps")
            if len(names) != 1 or names[0] not in tenant_cms:
                problems.append(f"Role {name} is not pinned to one tenant ConfigMap (resourceNames {names})")
            extra = set(rule.get("verbs", [])) - TEAM_VERBS
            if extra:
                problems.append(f"Role {name} grants {sorted(extra)} beyond {sorted(TEAM_VERBS)}")
    for binding in find(objs, "RoleBinding"):
        if binding["metadata"].get("labels", {}).get(key) != value:
            continue
        ref = binding["roleRef"]
        if ref["kind"] != "Role" or ref["name"] not in roles:
            problems.append(f"RoleBinding {binding['metadata']['name']} grants {ref['kind']} {ref['name']}, "
                            "not a team's tenant Role")
        elif binding["metadata"].get("namespace") != roles[ref["name"]]["metadata"].get("namespace"):
            problems.append(f"RoleBinding {binding['metadata']['name']} is not in its Role's namespace")
    namespaces = {o["metadata"].get("namespace") for o in [*tenant_configmaps(objs), *roles.values()]}
    server_ns = server_deployment(objs)["metadata"].get("namespace")
    if namespaces - {server_ns}:
        problems.append(f"tenant ConfigMaps or Roles in {sorted(namespaces - {server_ns})}, not the server's "
                        f"namespace {server_ns}: a pod mounts only ConfigMaps of its own namespace")
    return problems


# ------------------------------------------------------------------------------------------- CODEOWNERS

def codeowners_entries(text: str) -> list[tuple[str, list[str]]]:
    """(pattern, owners) per line, in file order (GitHub: the last matching line wins)."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pattern, *owners = line.split()
            entries.append((pattern, owners))
    return entries


def codeowners_match(pattern: str, path: str) -> bool:
    """GitHub CODEOWNERS matching for the pattern forms the example uses.

    A leading `/` anchors at the repository root (otherwise the pattern may match at any depth); a pattern
    also owns everything below it when it names a directory; `*` does not cross `/`.
    """
    body = pattern.lstrip("/").rstrip("/")
    regex = re.escape(body).replace(r"\*", "[^/]*") + "(?:/.*)?"
    if not pattern.startswith("/"):
        regex = "(?:.*/)?" + regex
    return re.fullmatch(regex, path) is not None


def effective_entry(entries: list[tuple[str, list[str]]], path: str) -> tuple[str, list[str]] | None:
    """The line that decides a path's owners: the last one matching it."""
    matching = [e for e in entries if codeowners_match(e[0], path)]
    return matching[-1] if matching else None


def effective_owners(entries: list[tuple[str, list[str]]], path: str) -> list[str]:
    entry = effective_entry(entries, path)
    return entry[1] if entry else []


def check_codeowners(text: str, tenant_files: list[str], platform_files: list[str], platform_owner: str) -> list[str]:
    """Every tenant file is owned by a team through a line naming that file (a broader line after it would
    hand it to someone else), not by the platform team alone; every platform file by the platform team alone."""
    entries = codeowners_entries(text)
    problems = []
    for path in platform_files:
        owners = effective_owners(entries, path)
        if owners != [platform_owner]:
            problems.append(f"{path} is owned by {owners}, not {platform_owner} alone")
    for path in tenant_files:
        entry = effective_entry(entries, path)
        if entry is None or entry[0].lstrip("/") != path:
            problems.append(f"{path}: no CODEOWNERS line names it last (deciding line: {entry})")
        owners = effective_owners(entries, path)
        if not owners or owners == [platform_owner]:
            problems.append(f"{path} has no team of its own (owners {owners})")
    return problems

