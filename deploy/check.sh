#!/usr/bin/env bash
# Checks the Kubernetes deployment of wasmcsi.
#
#   deploy/check.sh [OUT_DIR]
#
# 1. Renders every overlay with `kubectl kustomize`.
# 2. Validates every rendered object, and every plain example manifest, strictly
#    (unknown fields are errors) against the Kubernetes JSON schema shipped by
#    the `kubernetes-validate` Python package (pip install kubernetes-validate).
#    Version: the newest it ships, or $K8S_VERSION. Kinds that are CRDs and so
#    have no schema there are skipped by name (SKIP_KINDS below) and listed;
#    any other kind without a schema is an error.
# 3. Checks what a schema cannot: namespaces, pinned images, the driver name
#    agreeing across CSIDriver / config / registrar / socket dir / classes,
#    references to ConfigMaps, ServiceAccounts and Roles that exist, probe
#    ports served by a sidecar, the --config path inside a mounted ConfigMap,
#    storage capacity tracking (CSIDriver storageCapacity agrees with the
#    provisioner's --enable-capacity; its poll interval, owner level, env and
#    the RBAC they need), volumeLifecycleModes agreeing with the plugins that
#    take inline volumes (inlineVolumes: true), and that the overlays meant to
#    be installed together do not clash.
# 4. Extracts, into OUT_DIR (a temporary directory when not given):
#      configs/<overlay>/<configmap>.yaml   the embedded wasmcsi config
#      wasmcsi-containers.json              every `wasmcsi` container: overlay,
#          workload, command, args, env (resolved: literal values,
#          configMapKeyRef from the rendered ConfigMap, spec.nodeName ->
#          "node-1"), and which extracted config its --config points at
#      rendered/<overlay>.yaml              the rendered overlay
#    so that Rust tests can load each config with the real config loader and
#    compare each container's flags with `wasmcsi serve --help`.
# 5. With WASMCSI_BIN=/path/to/wasmcsi set, also does both of those here:
#    every flag in the manifests must appear in `wasmcsi serve --help`, and
#    `wasmcsi validate-config` must accept every config under the env of each
#    container that mounts it.
#
# Exit status: 0 when everything passed, 1 otherwise. The last line is the
# summary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Overlays a user applies. INSTALL_TOGETHER: overlays that must be installable
# side by side in one cluster (no conflicting objects).
OVERLAYS=(xsky-nfs local-dir examples/extra-plugin)
INSTALL_TOGETHER=(xsky-nfs local-dir)
# Plain manifests applied with `kubectl apply -f`.
EXAMPLE_DIRS=(examples/local-dir examples/xsky-nfs)

fail() { echo "deploy/check.sh: FAILED: $*" >&2; exit 1; }

command -v kubectl >/dev/null 2>&1 || fail "kubectl not found (it renders the overlays with its built-in kustomize)"
command -v python3 >/dev/null 2>&1 || fail "python3 not found"
python3 -c 'import kubernetes_validate' 2>/dev/null \
  || fail "the kubernetes-validate Python package is missing: pip install kubernetes-validate"

if [[ $# -gt 1 ]]; then
  echo "usage: deploy/check.sh [OUT_DIR]" >&2
  exit 2
fi
if [[ $# -eq 1 ]]; then
  out="$1"
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  keep=1
else
  out="$(mktemp -d)"
  keep=0
  trap 'rm -rf "$out"' EXIT
fi
rm -rf "$out/rendered" "$out/configs" "$out/wasmcsi-containers.json"
mkdir -p "$out/rendered"

render_failures=0
for overlay in "${OVERLAYS[@]}"; do
  slug="${overlay//\//-}"
  if ! kubectl kustomize "$here/$overlay" >"$out/rendered/$slug.yaml" 2>"$out/rendered/$slug.stderr"; then
    echo "FAIL render $overlay:"
    sed 's/^/    /' "$out/rendered/$slug.stderr"
    render_failures=$((render_failures + 1))
    rm -f "$out/rendered/$slug.yaml"
  else
    echo "ok   render $overlay"
    if [[ -s "$out/rendered/$slug.stderr" ]]; then
      sed 's/^/     kustomize: /' "$out/rendered/$slug.stderr"
    fi
  fi
  rm -f "$out/rendered/$slug.stderr"
done

status=0
python3 - "$here" "$out" "$keep" "$render_failures" "${WASMCSI_BIN:-}" "${K8S_VERSION:-}" \
  "${OVERLAYS[*]}" "${INSTALL_TOGETHER[*]}" "${EXAMPLE_DIRS[*]}" <<'PY' || status=$?
import json
import os
import re
import subprocess
import sys

import yaml
import kubernetes_validate
from kubernetes_validate import utils as kv_utils

here, out, keep, render_failures, wasmcsi_bin, k8s_version = sys.argv[1:7]
overlays = sys.argv[7].split()
install_together = sys.argv[8].split()
example_dirs = sys.argv[9].split()
render_failures = int(render_failures)
k8s_version = k8s_version or kv_utils.latest_version()

# CRD kinds: no schema in kubernetes-validate, skipped on purpose.
SKIP_KINDS = {
    ("snapshot.storage.k8s.io", "VolumeSnapshotClass"): "CRD of external-snapshotter",
    ("snapshot.storage.k8s.io", "VolumeSnapshot"): "CRD of external-snapshotter",
    ("groupsnapshot.storage.k8s.io", "VolumeGroupSnapshotClass"): "CRD of external-snapshotter",
    ("groupsnapshot.storage.k8s.io", "VolumeGroupSnapshot"): "CRD of external-snapshotter",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CSIDriver",
                  "StorageClass", "VolumeSnapshotClass", "VolumeGroupSnapshotClass"}
NAMESPACE = "wasmcsi"
SAMPLE_NODE = "node-1"

problems = []
skipped = {}
validated = 0


def problem(where, msg):
    problems.append(f"{where}: {msg}")
    print(f"FAIL {where}: {msg}")


def group_of(obj):
    api = obj.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def ident(obj):
    md = obj.get("metadata", {})
    ns = md.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


def validate(where, obj):
    global validated
    key = (group_of(obj), obj.get("kind"))
    if key in SKIP_KINDS:
        skipped.setdefault(f"{key[1]} ({key[0]})", SKIP_KINDS[key])
        print(f"skip {where}: {ident(obj)} (no schema: {SKIP_KINDS[key]})")
        return
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
        validated += 1
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        problem(where, f"{ident(obj)} does not validate: {path}: {e.message}")
    except kv_utils.SchemaNotFoundError as e:
        problem(where, f"{ident(obj)}: {e.message} (add it to SKIP_KINDS only if it is a CRD)")
    except kv_utils.VersionNotSupportedError:
        print(f"FATAL kubernetes-validate has no schemas for Kubernetes {k8s_version}")
        sys.exit(1)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(obj):
    if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "Pod":
        return obj["spec"]
    return None


def all_containers(spec):
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def flag_value(args, flag):
    for a in args or []:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def check_image(where, obj, c):
    image = c.get("image", "")
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    if "@" not in image and (":" not in last or last.endswith(":latest")):
        problem(where, f"{ident(obj)} container {c['name']}: image {image!r} is not pinned to a tag or digest")


def granted(by_kind, workload, group, resource, verb):
    """Whether the workload's ServiceAccount may VERB RESOURCE in its namespace,
    by the Roles and ClusterRoles the overlay binds to it."""
    sa = pod_spec(workload).get("serviceAccountName")
    rules = {}
    for kind in ("Role", "ClusterRole"):
        for r in by_kind.get(kind, []):
            rules[(kind, r["metadata"]["name"])] = r.get("rules", [])
    for rb in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in rb.get("subjects", [])):
            continue
        for rule in rules.get((rb["roleRef"]["kind"], rb["roleRef"]["name"]), []):
            if (group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
                    and verb in rule.get("verbs", [])):
                return True
    return False


def check_capacity(where, w, prov, csidriver, by_kind):
    """Storage capacity tracking: the provisioner's flags, its env, its RBAC
    and the CSIDriver's storageCapacity agree."""
    wid = ident(w)
    args = prov.get("args", [])
    on = "--enable-capacity" in args or flag_value(args, "--enable-capacity") == "true"
    if bool(csidriver.get("storageCapacity")) != on:
        problem(where, f"{wid}: csi-provisioner --enable-capacity is {on} but CSIDriver "
                       f"storageCapacity is {csidriver.get('storageCapacity')!r}")
    if not on:
        return
    if "--node-deployment=true" in args and w["kind"] != "DaemonSet":
        problem(where, f"{wid}: a node-deployment provisioner belongs in the node DaemonSet")
    interval = flag_value(args, "--capacity-poll-interval")
    if not interval or not re.fullmatch(r"(\d+(ms|s|m|h))+", interval):
        problem(where, f"{wid}: csi-provisioner needs --capacity-poll-interval=DURATION, has {interval!r}")
    level = flag_value(args, "--capacity-ownerref-level")
    if level is None or not re.fullmatch(r"-?\d+", level):
        problem(where, f"{wid}: csi-provisioner needs --capacity-ownerref-level=N (the owner of its objects)")
        level = "-1"
    level = int(level)
    if w["kind"] == "DaemonSet" and level not in (0, 1):
        problem(where, f"{wid}: --capacity-ownerref-level={level}: 0 (the pod) or 1 (the DaemonSet) "
                       "so the objects go with the driver")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in prov.get("env", [])}
    want_env = {"NAMESPACE": "metadata.namespace"}
    if level >= 0:
        want_env["POD_NAME"] = "metadata.name"
    for name, path in want_env.items():
        if env.get(name) != path:
            problem(where, f"{wid}: csi-provisioner needs env {name} from fieldRef {path}")
    needs = [("storage.k8s.io", "csistoragecapacities", v)
             for v in ("get", "list", "watch", "create", "update", "patch", "delete")]
    if level >= 0:
        needs.append(("", "pods", "get"))
    if level >= 1:
        owner = {"DaemonSet": "daemonsets", "Deployment": "replicasets"}.get(w["kind"])
        needs.append(("apps", owner, "get"))
    for group, resource, verb in needs:
        if not granted(by_kind, w, group, resource, verb):
            problem(where, f"{wid}: ServiceAccount {pod_spec(w).get('serviceAccountName')} may not "
                           f"{verb} {resource} ({group or 'core'}), which capacity tracking needs")


def check_overlay(overlay, docs, containers_out, configs_out):
    where = overlay
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    names = {(d["kind"], d["metadata"]["name"]) for d in docs}

    # Namespaces.
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] in CLUSTER_SCOPED:
            if ns:
                problem(where, f"{ident(d)} is cluster-scoped but has a namespace")
        elif ns != NAMESPACE:
            problem(where, f"{ident(d)} is not in namespace {NAMESPACE}")
    if ("Namespace", NAMESPACE) not in names:
        problem(where, f"no Namespace {NAMESPACE}")

    text = yaml.safe_dump_all(docs)
    if "DRIVER-NAME" in text:
        problem(where, "the base's DRIVER-NAME placeholder was not replaced")

    # The driver name, everywhere it appears.
    drivers = [d["metadata"]["name"] for d in by_kind.get("CSIDriver", [])]
    if len(drivers) != 1:
        problem(where, f"expected one CSIDriver, found {drivers}")
        return
    driver = drivers[0]
    spec = by_kind["CSIDriver"][0]["spec"]
    want = {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "File"}
    for k, v in want.items():
        if spec.get(k) != v:
            problem(where, f"CSIDriver {driver}: spec.{k} is {spec.get(k)!r}, want {v!r}")
    modes = spec.get("volumeLifecycleModes")
    if modes not in (["Persistent"], ["Persistent", "Ephemeral"]):
        problem(where, f"CSIDriver {driver}: spec.volumeLifecycleModes is {modes!r}, "
                       "want [Persistent] or [Persistent, Ephemeral]")
    for sc in by_kind.get("StorageClass", []):
        if sc.get("provisioner") != driver:
            problem(where, f"{ident(sc)} provisioner {sc.get('provisioner')!r} is not {driver}")
        if sc.get("allowVolumeExpansion") is not True:
            problem(where, f"{ident(sc)} does not allow volume expansion")

    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    roles = {("Role", d["metadata"]["name"]) for d in by_kind.get("Role", [])}
    roles |= {("ClusterRole", d["metadata"]["name"]) for d in by_kind.get("ClusterRole", [])}
    sas = {d["metadata"]["name"] for d in by_kind.get("ServiceAccount", [])}

    # Driver configs: parse and check the driver name.
    slug = overlay.replace("/", "-")
    for cm_name, cm in configmaps.items():
        data = cm.get("data", {})
        if "config.yaml" not in data:
            continue
        try:
            cfg = yaml.safe_load(data["config.yaml"])
        except yaml.YAMLError as e:
            problem(where, f"ConfigMap {cm_name}: config.yaml is not YAML: {e}")
            continue
        name = (cfg or {}).get("driver", {}).get("name")
        if name != driver:
            problem(where, f"ConfigMap {cm_name}: driver.name {name!r} is not the CSIDriver's {driver!r}")
        # Inline volumes: kubelet sends them only with Ephemeral declared, and
        # the driver serves them only for plugins whose config allows them.
        inline = [p.get("name") for p in (cfg or {}).get("plugins", []) or []
                  if p.get("inlineVolumes") is True]
        ephemeral = "Ephemeral" in (modes or [])
        if ephemeral and not inline:
            problem(where, f"CSIDriver {driver} declares Ephemeral but no plugin in ConfigMap "
                           f"{cm_name} has inlineVolumes: true")
        if inline and not ephemeral:
            problem(where, f"ConfigMap {cm_name}: plugins {inline} take inline volumes but "
                           f"CSIDriver {driver} does not declare Ephemeral")
        path = os.path.join(out, "configs", slug, cm_name + ".yaml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(data["config.yaml"])
        configs_out[(overlay, cm_name)] = os.path.relpath(path, out)

    for rb in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
        ref = rb["roleRef"]
        if (ref["kind"], ref["name"]) not in roles:
            problem(where, f"{ident(rb)} refers to missing {ref['kind']} {ref['name']}")
        for s in rb.get("subjects", []):
            if s["kind"] == "ServiceAccount" and (s["name"] not in sas or s.get("namespace") != NAMESPACE):
                problem(where, f"{ident(rb)} binds missing ServiceAccount {s.get('namespace')}/{s['name']}")

    for w in by_kind.get("Deployment", []) + by_kind.get("DaemonSet", []):
        ps = pod_spec(w)
        wid = ident(w)
        sel = w["spec"]["selector"]["matchLabels"]
        if sel.get("app.kubernetes.io/instance") != driver:
            problem(where, f"{wid}: selector lacks app.kubernetes.io/instance={driver}")
        if ps.get("serviceAccountName") not in sas:
            problem(where, f"{wid}: ServiceAccount {ps.get('serviceAccountName')!r} not in the overlay")
        volumes = {v["name"]: v for v in ps.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problem(where, f"{wid}: volume {v['name']} uses missing ConfigMap {v['configMap']['name']}")
        containers = all_containers(ps)
        by_name = {c["name"]: c for c in containers}
        # Ports served by sidecars: --http-endpoint=:PORT.
        served = {}
        for c in containers:
            ep = flag_value(c.get("args"), "--http-endpoint")
            if ep:
                served[int(ep.rsplit(":", 1)[1])] = c["name"]
        for c in containers:
            check_image(where, w, c)
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(where, f"{wid} container {c['name']}: mount of missing volume {m['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref.get("key") not in configmaps.get(ref["name"], {}).get("data", {}):
                    problem(where, f"{wid} container {c['name']}: env {e['name']} refers to missing ConfigMap key {ref['name']}/{ref.get('key')}")
            probe = c.get("livenessProbe", {}).get("httpGet")
            if probe:
                port = probe["port"]
                if isinstance(port, str):
                    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                    if port not in ports:
                        problem(where, f"{wid} container {c['name']}: probe port {port!r} is not declared")
                        continue
                    port = ports[port]
                if port not in served:
                    problem(where, f"{wid} container {c['name']}: nothing serves the probe's port {port}")
        reg = by_name.get("node-driver-registrar")
        if reg:
            path = flag_value(reg.get("args"), "--kubelet-registration-path")
            if path != f"/var/lib/kubelet/plugins/{driver}/csi.sock":
                problem(where, f"{wid}: --kubelet-registration-path {path!r} does not name {driver}")
            sock = volumes.get("socket-dir", {}).get("hostPath", {}).get("path")
            if sock != f"/var/lib/kubelet/plugins/{driver}":
                problem(where, f"{wid}: socket-dir hostPath {sock!r} does not name {driver}")
        if w["kind"] == "Deployment":
            for c in containers:
                if c["name"].startswith("csi-") and "--leader-election" not in c.get("args", []):
                    problem(where, f"{wid} container {c['name']}: no --leader-election")

        prov = by_name.get("csi-provisioner")
        if prov:
            check_capacity(where, w, prov, spec, by_kind)
        c = by_name.get("wasmcsi")
        if not c:
            problem(where, f"{wid}: no container named wasmcsi")
            continue
        args = c.get("args", [])
        if not args or args[0] != "serve":
            problem(where, f"{wid}: wasmcsi args do not start with 'serve': {args}")
        services = flag_value(args, "--services")
        if services is not None and services not in ("controller", "node", "controller,node"):
            problem(where, f"{wid}: --services={services}: want controller, node or controller,node")
        log_format = flag_value(args, "--log-format")
        if log_format is not None and log_format not in ("text", "json"):
            problem(where, f"{wid}: --log-format={log_format}: want text or json")
        if w["kind"] == "DaemonSet" and "node" not in (services or "controller,node").split(","):
            problem(where, f"{wid}: the node DaemonSet does not run the node service")
        config_rel = None
        cfg_path = flag_value(args, "--config")
        if not cfg_path:
            problem(where, f"{wid}: wasmcsi has no --config=FILE")
        else:
            mount = next((m for m in c.get("volumeMounts", [])
                          if cfg_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
            vol = volumes.get(mount["name"]) if mount else None
            if not vol or "configMap" not in vol:
                problem(where, f"{wid}: --config={cfg_path} is not inside a mounted ConfigMap")
            else:
                if mount.get("subPath"):
                    problem(where, f"{wid}: the config is mounted with subPath, so updates never reach the pod")
                key = cfg_path[len(mount["mountPath"].rstrip("/")) + 1:]
                cm = vol["configMap"]["name"]
                if key not in configmaps.get(cm, {}).get("data", {}):
                    problem(where, f"{wid}: --config={cfg_path}: ConfigMap {cm} has no key {key}")
                config_rel = configs_out.get((overlay, cm))
        env = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[e["name"]] = SAMPLE_NODE
            elif "configMapKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["configMapKeyRef"]
                env[e["name"]] = configmaps.get(ref["name"], {}).get("data", {}).get(ref["key"])
            else:
                env[e["name"]] = None
        containers_out.append({
            "overlay": overlay,
            "kind": w["kind"],
            "name": w["metadata"]["name"],
            "container": "wasmcsi",
            "command": c.get("command", []),
            "args": args,
            "env": env,
            "config": config_rel,
        })


rendered = {}
containers_out = []
configs_out = {}
for overlay in overlays:
    slug = overlay.replace("/", "-")
    path = os.path.join(out, "rendered", slug + ".yaml")
    if not os.path.exists(path):
        continue  # render failure already reported
    docs = load_docs(path)
    rendered[overlay] = docs
    for d in docs:
        validate(overlay, d)
    check_overlay(overlay, docs, containers_out, configs_out)
    print(f"ok   checked {overlay}: {len(docs)} objects")

# Overlays installed side by side must not clash.
seen = {}
for overlay in install_together:
    for d in rendered.get(overlay, []):
        k = (group_of(d), d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        if k in seen and seen[k][1] != d:
            problem("install together", f"{ident(d)} differs between {seen[k][0]} and {overlay}")
        seen.setdefault(k, (overlay, d))

example_files = 0
for ex in example_dirs:
    directory = os.path.join(here, ex)
    for fn in sorted(os.listdir(directory)):
        if not fn.endswith((".yaml", ".yml")):
            continue
        example_files += 1
        where = f"{ex}/{fn}"
        for d in load_docs(os.path.join(directory, fn)):
            validate(where, d)
            ps = pod_spec(d)
            for c in all_containers(ps) if ps else []:
                check_image(where, d, c)
            if d.get("kind") == "StorageClass" and d.get("allowVolumeExpansion") is not True:
                problem(where, f"{ident(d)} does not allow volume expansion")
    print(f"ok   checked {ex}")

with open(os.path.join(out, "wasmcsi-containers.json"), "w") as f:
    json.dump({
        "note": "env is resolved as in the pod, with spec.nodeName = " + SAMPLE_NODE,
        "containers": containers_out,
    }, f, indent=2)
    f.write("\n")

binary_note = "flags and configs not run through a binary (set WASMCSI_BIN)"
if wasmcsi_bin:
    try:
        help_text = subprocess.run([wasmcsi_bin, "serve", "--help"], capture_output=True,
                                   text=True, timeout=30, check=True).stdout
    except Exception as e:  # noqa: BLE001
        problem("WASMCSI_BIN", f"`{wasmcsi_bin} serve --help` failed: {e}")
        help_text = None
    if help_text is not None:
        known = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
        for c in containers_out:
            for a in c["args"][1:]:
                if a.startswith("--") and a.split("=", 1)[0] not in known:
                    problem(f"{c['overlay']} {c['kind']}/{c['name']}",
                            f"flag {a.split('=', 1)[0]} is not in `wasmcsi serve --help`")
            if c["config"]:
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
                env.update({k: v for k, v in c["env"].items() if v is not None})
                r = subprocess.run([wasmcsi_bin, "validate-config", "--config",
                                    os.path.join(out, c["config"])],
                                   capture_output=True, text=True, timeout=60, env=env)
                if r.returncode != 0:
                    problem(f"{c['overlay']} {c['kind']}/{c['name']}",
                            f"validate-config refused {c['config']}: {(r.stderr or r.stdout).strip()}")
        binary_note = f"flags and configs checked with {wasmcsi_bin}"
    print(f"ok   {binary_note}" if not problems else f"...  {binary_note}")

skip_text = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
summary = (f"{len(overlays) - render_failures}/{len(overlays)} overlays rendered, "
           f"{validated} objects valid against Kubernetes {kv_utils.major_minor(k8s_version)} "
           f"(strict, kubernetes-validate {kubernetes_validate.__version__}) incl. {example_files} example files, "
           f"skipped CRD kinds [{skip_text}], "
           f"{len(configs_out)} configs and {len(containers_out)} wasmcsi containers extracted; {binary_note}")
print()
if keep == "1":
    print(f"extracted into {out}: configs/, wasmcsi-containers.json, rendered/")
if problems or render_failures:
    print(f"deploy/check.sh: FAILED ({len(problems) + render_failures} problems): {summary}")
    sys.exit(1)
print(f"deploy/check.sh: OK: {summary}")
PY
exit "$status"
