#!/usr/bin/env bash
# Validates the deployment manifests offline, with no cluster and no container engine:
#
#   1. deploy/compose.yaml against the Compose Specification's JSON schema (the copy
#      check-jsonschema vendors: `--builtin-schema vendor.compose-spec`);
#   2. deploy/kubernetes rendered by kustomize (a `kustomize` binary, else `kubectl
#      kustomize`), and always also by the small renderer below, which must agree with
#      it; where neither binary exists the small renderer's output is what is validated;
#   3. every rendered object against the Kubernetes schema of one version, strict
#      (kubernetes-validate --strict: unknown fields are errors);
#   4. the project's rules (security layers 1 and 2): uid/gid 1000, read-only root, no
#      privilege escalation, every capability dropped, seccomp, probes on the probe port
#      over HTTPS, resources, PodDisruptionBudgets, NetworkPolicies, HTTPS only (no
#      http:// URL, no plaintext or probe port published), the database reachable from
#      the CA only, and no token, password or private key written into a manifest.
#
# Usage: scripts/validate-deploy.sh [DIR]        DIR holds compose.yaml and kubernetes/
#                                                (default: the repository's deploy/)
#        scripts/validate-deploy.sh --self-test  breaks copies of the manifests in a
#                                                temporary directory, one way at a time,
#                                                and checks that each is caught
#
# Tools go into a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/crank-deploy-venv (or
# CRANK_DEPLOY_VENV), from PyPI, once; later runs reuse it. CRANK_K8S_VERSION picks the
# Kubernetes schema version (default 1.32.0); CRANK_DEPLOY_RENDERER=python skips the
# kustomize binaries. Exits non-zero, naming each failure, when anything fails.
# docs/deploy.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self="$repo/scripts/validate-deploy.sh"
mode=validate
if [ "${1:-}" = "--self-test" ]; then
    mode="self-test"
    shift
fi
deploy=$(cd "${1:-$repo/deploy}" && pwd)
k8s_version=${CRANK_K8S_VERSION:-1.32.0}
venv=${CRANK_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/crank-deploy-venv}
requirements=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.3)

# ---- tools -------------------------------------------------------------------------
stamp="$venv/.crank-deploy-requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]; then
    echo "setting up the validation tools in $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's python3 keeps venv (ensurepip) in a package of its own.
        sudo_cmd=""
        [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
    echo "${requirements[*]}" >"$stamp"
fi
py="$venv/bin/python"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- the checks, in Python ---------------------------------------------------------
cat >"$work/checks.py" <<'PY'
"""Renders the kustomization, compares renderings, and checks the project's rules."""
import copy
import os
import re
import sys

import yaml

FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print(f"FAIL: {msg}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- a small kustomize: resources (files), namespace, labels without selectors -------

CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService",
    "CSIDriver", "VolumeAttachment", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources"}


def render(kdir):
    """What `kustomize build kdir` gives for the subset of kustomize this project uses:
    `resources` (files), `namespace` (set on namespaced objects; a Namespace object is
    renamed to it) and `labels` with includeSelectors false (added to metadata.labels of
    every object, templates untouched). Anything else is refused rather than guessed."""
    with open(os.path.join(kdir, "kustomization.yaml")) as f:
        k = yaml.safe_load(f) or {}
    unsupported = sorted(set(k) - SUPPORTED_KEYS)
    if unsupported:
        raise ValueError(f"kustomization.yaml: {', '.join(unsupported)} unsupported by the fallback renderer")
    labels = {}
    for entry in k.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors"} or entry.get("includeSelectors", False):
            raise ValueError("kustomization.yaml: only `labels` with pairs and includeSelectors: false are supported")
        for key, value in entry.get("pairs", {}).items():
            if not isinstance(value, str):
                raise ValueError(f"kustomization.yaml: label {key} must be a string, not {value!r}")
            labels[key] = value
    ns = k.get("namespace")
    out, seen = [], set()
    for res in k.get("resources", []):
        path = os.path.join(kdir, res)
        if not os.path.isfile(path):
            raise ValueError(f"kustomization.yaml: resource {res} is not a file here (directories and URLs are unsupported)")
        for doc in load_all(path):
            doc = copy.deepcopy(doc)
            meta = doc.setdefault("metadata", {})
            if ns:
                if doc.get("kind") == "Namespace":
                    meta["name"] = ns
                elif doc.get("kind") not in CLUSTER_SCOPED:
                    meta["namespace"] = ns
            if labels:
                meta["labels"] = {**(meta.get("labels") or {}), **labels}
            key = (doc.get("apiVersion"), doc.get("kind"), meta.get("namespace"), meta.get("name"))
            if key in seen:
                raise ValueError(f"{res}: {key[1]}/{key[3]} is defined twice")
            seen.add(key)
            out.append(doc)
    return out


def keyed(docs):
    return {(d.get("apiVersion"), d.get("kind"), (d.get("metadata") or {}).get("namespace"),
             (d.get("metadata") or {}).get("name")): d for d in docs}


def compare(real_path, fallback_path):
    real, ours = keyed(load_all(real_path)), keyed(load_all(fallback_path))
    ok = True
    for key in sorted(set(real) | set(ours), key=str):
        if key not in ours:
            fail(f"render: kustomize makes {key[1]}/{key[3]}, the fallback renderer does not")
            ok = False
        elif key not in real:
            fail(f"render: the fallback renderer makes {key[1]}/{key[3]}, kustomize does not")
            ok = False
        elif real[key] != ours[key]:
            fail(f"render: {key[1]}/{key[3]} differs between kustomize and the fallback renderer")
            ok = False
    return ok


# ---- rules shared by both ------------------------------------------------------------

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\"']+:([^\s@/\"']+)@")
KEY_LITERAL = re.compile(r"(?i)(password|passwd|secret|token)[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9+/=_.-]{8,})")
PLACEHOLDER = re.compile(r"<[^>]*>|\$\{[^}]*\}|[A-Z_]+")
EXAMPLE_MARK = re.compile(r"REPLACE-ME|EXAMPLE ONLY")


def scan_secrets(path, text):
    """No token, password or private key written into a manifest, but on a line marked
    REPLACE-ME or EXAMPLE ONLY (an example to replace)."""
    for n, line in enumerate(text.splitlines(), 1):
        if EXAMPLE_MARK.search(line):
            continue
        where = f"{path}:{n}"
        if JWT.search(line):
            fail(f"{where}: a join token (JWT) is written into the manifest; pass it at run time")
        if PRIVATE_KEY.search(line):
            fail(f"{where}: a private key is written into the manifest")
        for m in URL_PASSWORD.finditer(line):
            if not PLACEHOLDER.fullmatch(m.group(1)):
                fail(f"{where}: a URL with a password is written into the manifest")
        # Prose in comments says "token:" too; a key with a value is what counts here.
        for m in KEY_LITERAL.finditer("" if line.lstrip().startswith("#") else line):
            value = m.group(2)
            if value.startswith("/") or PLACEHOLDER.fullmatch(value):
                continue
            fail(f"{where}: a literal {m.group(1).lower()} is written into the manifest")


def urls_in(value):
    return re.findall(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,\"']+", str(value))


def check_https(where, name, value):
    for url in urls_in(value):
        if url.startswith("http://"):
            fail(f"{where}: {name} is a plaintext http:// URL ({url}); HTTPS only")


def probe_url_port(url):
    m = re.fullmatch(r"https://localhost:(\d+)/readyz", url)
    return int(m.group(1)) if m else None


# ---- compose -------------------------------------------------------------------------

CRANK_IMAGE = "crank-security/crank:latest"
WORKER_IMAGES = {"crank-security/hello-world:latest", "crank-security/caller:latest"}
DB_IMAGES = ("postgres", "docker.io/library/postgres")


def service_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def https_ports(svc):
    """The ports a crank service serves its main HTTPS (mTLS) listener on."""
    env, cmd = service_env(svc), svc.get("command") or []
    ports = set()
    for var in ("HELLO_WORLD_HTTPS_PORT", "CALLER_HTTPS_PORT", "PLATFORM_HTTPS_PORT"):
        if env.get(var):
            ports.add(int(env[var]))
    if isinstance(cmd, list):
        for flag, value in zip(cmd, cmd[1:]):
            if flag == "--port":
                ports.add(int(value))
            if flag == "--listen":
                ports.add(int(value.rsplit(":", 1)[1]))
    return ports


def published(svc):
    """(host ip or None, container port) of every published or exposed port."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append((p.get("host_ip"), int(str(p["target"]).split("/")[0])))
        else:
            parts = str(p).split("/")[0].split(":")
            out.append((parts[0] if len(parts) == 3 else None, int(parts[-1].split("-")[0])))
    for p in svc.get("expose") or []:
        out.append(("expose", int(str(p).split("/")[0])))
    return out


def service_networks(svc):
    nets = svc.get("networks")
    if nets is None:
        return [] if svc.get("network_mode") else ["default"]
    return list(nets) if isinstance(nets, (list, dict)) else []


def check_compose(path):
    with open(path) as f:
        text = f.read()
    scan_secrets(path, text)
    doc = yaml.safe_load(text)
    services = doc.get("services") or {}
    networks = doc.get("networks") or {}
    volumes = doc.get("volumes") or {}
    secrets = doc.get("secrets") or {}
    ca_services = {n for n, s in services.items()
                   if isinstance(s.get("command"), list) and s["command"][:2] == ["ca", "serve"]}
    db_services = {n for n, s in services.items() if str(s.get("image", "")).startswith(DB_IMAGES)}
    if len(ca_services) < 2:
        fail(f"compose: {len(ca_services)} CA replica(s) (`crank ca serve`); two are expected")
    if not db_services:
        fail("compose: no PostgreSQL service for the CA replicas")
    for name, svc in services.items():
        where = f"compose: service {name}"
        image = str(svc.get("image", ""))
        if str(svc.get("user")) != "1000:1000":
            fail(f"{where}: user is {svc.get('user')!r}, not \"1000:1000\"")
        if svc.get("read_only") is not True:
            fail(f"{where}: read_only is not true (the root filesystem must be read-only)")
        if "ALL" not in (svc.get("cap_drop") or []):
            fail(f"{where}: cap_drop does not drop ALL capabilities")
        if svc.get("cap_add"):
            fail(f"{where}: cap_add gives capabilities back")
        if not any(re.fullmatch(r"no-new-privileges(:true|=true)?", str(o)) for o in svc.get("security_opt") or []):
            fail(f"{where}: security_opt lacks no-new-privileges:true")
        if svc.get("privileged"):
            fail(f"{where}: privileged")
        for key in ("network_mode", "pid", "ipc", "userns_mode", "uts"):
            if svc.get(key) == "host":
                fail(f"{where}: {key} is host")
        if image.startswith("crank-security/") and image not in WORKER_IMAGES | {CRANK_IMAGE}:
            fail(f"{where}: image {image} is none of crank-security's images")
        env = service_env(svc)
        for var, value in env.items():
            check_https(where, var, value)
            if var == "CRANK_JOIN_TOKEN" and value is not None:
                fail(f"{where}: CRANK_JOIN_TOKEN has a value in the file; pass a token at run time")
            if var == "CRANK_CA_STORE" and value is not None:
                fail(f"{where}: CRANK_CA_STORE (with the database password) is in the file; use the env file")
            if re.search(r"PASSWORD$", var) and value is not None:
                fail(f"{where}: {var} holds a literal password; use a secret file ({var}_FILE)")
        one_shot = "setup" in (svc.get("profiles") or []) or str(svc.get("restart", "")) == "no"
        hc = svc.get("healthcheck") or {}
        test = hc.get("test")
        if not one_shot:
            if hc.get("disable") or not isinstance(test, list) or not test:
                fail(f"{where}: no healthcheck (a long-running service needs one)")
            elif image == CRANK_IMAGE or image in WORKER_IMAGES:
                probe = env.get("CRANK_PROBE_PORT")
                if not probe:
                    fail(f"{where}: CRANK_PROBE_PORT is not set (no probe listener)")
                call = ["CMD", "/usr/local/bin/crank", "probe"] if image == CRANK_IMAGE \
                    else ["CMD", "/usr/local/bin/crank-probe"]
                if test[:-1] != call or probe_url_port(test[-1]) is None:
                    fail(f"{where}: healthcheck {test} is not {call + ['https://localhost:<probe port>/readyz']}")
                elif probe and probe_url_port(test[-1]) != int(probe):
                    fail(f"{where}: the healthcheck probes port {probe_url_port(test[-1])}, the probe listener is on {probe}")
            elif name in db_services:
                if "pg_isready" not in " ".join(map(str, test)):
                    fail(f"{where}: the database's healthcheck does not run pg_isready")
        serving = https_ports(svc)
        for host_ip, port in published(svc):
            if port not in serving:
                fail(f"{where}: publishes port {port}, which is not its HTTPS (mTLS) port {sorted(serving)}; "
                     "publish nothing else (no plaintext, probe or database port)")
        nets = service_networks(svc)
        for net in nets:
            if net != "default" and net not in networks:
                fail(f"{where}: network {net} is not declared")
        if nets and not svc.get("ports") and not one_shot:
            for net in nets:
                if not (networks.get(net) or {}).get("internal"):
                    fail(f"{where}: on network {net}, which is not internal, yet it publishes nothing")
        for v in svc.get("volumes") or []:
            source = v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
            vtype = v.get("type", "volume") if isinstance(v, dict) else None
            named = source and not source.startswith(("/", ".", "~", "$")) and vtype in (None, "volume")
            if named and source not in volumes:
                fail(f"{where}: volume {source} is not declared")
        for s in svc.get("secrets") or []:
            sname = s.get("source") if isinstance(s, dict) else s
            if sname not in secrets:
                fail(f"{where}: secret {sname} is not declared")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                fail(f"{where}: depends on {dep}, which is no service")
    # Layer 1: the database's networks are internal and hold the database and the CA only.
    for db in db_services:
        for net in service_networks(services[db]):
            if not (networks.get(net) or {}).get("internal"):
                fail(f"compose: network {net} of the database is not internal: true")
            members = {n for n, s in services.items() if net in service_networks(s)}
            strangers = sorted(members - ca_services - db_services)
            if strangers:
                fail(f"compose: {', '.join(strangers)} can reach the database on network {net} (only the CA may)")


# ---- kubernetes ----------------------------------------------------------------------

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def matches(selector, labels):
    selector = selector or {}
    if set(selector) - {"matchLabels"}:
        return False  # matchExpressions are not used here; refuse to guess
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def effective(pod_sc, c_sc, key):
    return c_sc[key] if key in c_sc else pod_sc.get(key)


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_kubernetes(rendered, kdir):
    docs = load_all(rendered)
    for fname in sorted(os.listdir(kdir)):
        if fname.endswith((".yaml", ".yml")):
            with open(os.path.join(kdir, fname)) as f:
                scan_secrets(os.path.join(os.path.basename(kdir), fname), f.read())
    with open(os.path.join(kdir, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f) or {}
    for gen in kust.get("secretGenerator") or []:
        for lit in gen.get("literals") or []:
            if "REPLACE-ME" not in str(lit):
                fail(f"kustomization: secretGenerator {gen.get('name')} has a literal not marked REPLACE-ME")
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    services = [d for d in docs if d.get("kind") == "Service"]
    default_deny = [p for p in policies
                    if p["spec"].get("podSelector") == {} and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
                    and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    if not default_deny:
        fail("kubernetes: no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
    pod_labels = {}
    for d in docs:
        kind, name = d.get("kind"), d["metadata"].get("name")
        where = f"kubernetes: {kind}/{name}"
        if kind == "Secret":
            fail(f"{where}: a Secret is committed; the operator creates Secrets (docs/deploy.md)")
        if kind not in WORKLOADS:
            continue
        template = d["spec"]["template"]
        labels = template["metadata"].get("labels") or {}
        pod_labels[name] = labels
        spec = template["spec"]
        pod_sc = spec.get("securityContext") or {}
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                fail(f"{where}: {key} is true")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{where}: automountServiceAccountToken is not false (no pod here needs the API)")
        for v in spec.get("volumes") or []:
            if "hostPath" in v:
                fail(f"{where}: volume {v['name']} is a hostPath")
        if labels.get("app.kubernetes.io/component") == "ca" and (d["spec"].get("replicas") or 1) < 2:
            fail(f"{where}: the CA runs {d['spec'].get('replicas')} replica(s); two or more are expected")
        init = spec.get("initContainers") or []
        for c in init + (spec.get("containers") or []):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            if effective(pod_sc, sc, "runAsNonRoot") is not True:
                fail(f"{cw}: runAsNonRoot is not true")
            if effective(pod_sc, sc, "runAsUser") != 1000:
                fail(f"{cw}: runAsUser is {effective(pod_sc, sc, 'runAsUser')}, not 1000")
            if effective(pod_sc, sc, "runAsGroup") != 1000:
                fail(f"{cw}: runAsGroup is {effective(pod_sc, sc, 'runAsGroup')}, not 1000")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{cw}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                fail(f"{cw}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
                fail(f"{cw}: capabilities do not drop ALL (or add some back)")
            seccomp = (effective(pod_sc, sc, "seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                fail(f"{cw}: seccompProfile is {seccomp}, not RuntimeDefault")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    if what not in (res.get(part) or {}):
                        fail(f"{cw}: resources.{part}.{what} is not set")
            env = {}
            for e in c.get("env") or []:
                if "value" in e:
                    env[e["name"]] = e["value"]
                    check_https(cw, e["name"], e["value"])
                    if re.search(r"TOKEN|PASSWORD|STORE", e["name"]):
                        fail(f"{cw}: {e['name']} has a literal value; take it from a Secret (secretKeyRef)")
            for p in c.get("ports") or []:
                if p.get("name") not in ("https", "probe"):
                    fail(f"{cw}: container port {p.get('containerPort')} is named {p.get('name')!r}, "
                         "not https or probe (HTTPS only)")
            if c in init:
                continue
            probe_port = env.get("CRANK_PROBE_PORT")
            if not probe_port:
                fail(f"{cw}: CRANK_PROBE_PORT is not set (no probe listener)")
            for kind_, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
                probe = c.get(kind_)
                if probe is None:
                    if path:
                        fail(f"{cw}: no {kind_}")
                    continue
                get = probe.get("httpGet") or {}
                if get.get("scheme") != "HTTPS":
                    fail(f"{cw}: {kind_} is not an HTTPS httpGet (scheme {get.get('scheme')})")
                if path and get.get("path") != path:
                    fail(f"{cw}: {kind_} asks {get.get('path')}, not {path}")
                if probe_port and port_number(c, get.get("port")) != int(probe_port):
                    fail(f"{cw}: {kind_} is on port {get.get('port')}, the probe listener on {probe_port}")
        if not any(matches(p["spec"].get("selector"), labels) for p in pdbs):
            fail(f"{where}: no PodDisruptionBudget selects its pods")
        if not any(matches(p["spec"].get("podSelector"), labels) for p in policies):
            fail(f"{where}: no NetworkPolicy selects its pods")
    for s in services:
        where = f"kubernetes: Service/{s['metadata']['name']}"
        if s["spec"].get("type", "ClusterIP") != "ClusterIP":
            fail(f"{where}: type {s['spec'].get('type')}; only ClusterIP (nothing published outside the cluster)")
        for p in s["spec"].get("ports") or []:
            if p.get("name") != "https" or p.get("appProtocol", "https") != "https":
                fail(f"{where}: port {p.get('port')} is not an https port")
            if p.get("targetPort") not in ("https", None) and not isinstance(p.get("targetPort"), int):
                fail(f"{where}: port {p.get('port')} targets {p.get('targetPort')}, not the https port")
    # Layer 1: only the CA reaches the database; workers reach the CA, workers and DNS.
    for p in policies:
        selected = [n for n, labels in pod_labels.items() if matches(p["spec"].get("podSelector"), labels)]
        for rule in p["spec"].get("egress") or []:
            ports = [q.get("port") for q in rule.get("ports") or []]
            for n in selected:
                component = pod_labels[n].get("app.kubernetes.io/component")
                if component != "ca" and (5432 in ports or not ports):
                    fail(f"kubernetes: NetworkPolicy/{p['metadata']['name']} lets {n} reach the database port (or any port)")
                if component != "ca" and not rule.get("to") and not all(q == 53 for q in ports):
                    fail(f"kubernetes: NetworkPolicy/{p['metadata']['name']} lets {n} reach any destination")


def main():
    cmd = sys.argv[1]
    try:
        if cmd == "render":
            with open(sys.argv[3], "w") as f:
                yaml.safe_dump_all(render(sys.argv[2]), f, sort_keys=True)
            return 0
        if cmd == "compare":
            return 0 if compare(sys.argv[2], sys.argv[3]) else 1
        if cmd == "rules":
            check_compose(sys.argv[2])
            check_kubernetes(sys.argv[3], sys.argv[4])
            return 1 if FAILURES else 0
    except (ValueError, KeyError, TypeError, yaml.YAMLError, OSError) as e:
        print(f"FAIL: {cmd}: {e}")
        return 1
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
PY

# ---- self-test: every check must be able to fail -------------------------------------
if [ "$mode" = "self-test" ]; then
    cat >"$work/selftest.py" <<'PY'
"""Breaks a copy of the manifests one way at a time; the validator must fail each time,
naming what broke, and pass the unbroken copy."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

script, deploy = sys.argv[1], sys.argv[2]
C, H, A, N, K = ("compose.yaml", "kubernetes/hello-world.yaml", "kubernetes/ca.yaml",
                 "kubernetes/network-policies.yaml", "kubernetes/kustomization.yaml")
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJoZWxsby13b3JsZCJ9.c2lnbmF0dXJl"
SECRET = """apiVersion: v1
kind: Secret
metadata:
  name: crank-ca-store
stringData:
  url: postgres://crank:hunter2hunter2@db:5432/crank
"""

# (name, [(file, old, new, occurrence: 1-based, negative from the end, None for all)],
#  text the output must hold, environment)
CASES = [
    ("compose schema: unknown key", [(C, "  caller:\n", "  caller:\n    privilegedd: true\n", 1)], "privilegedd", {}),
    ("compose: root user", [(C, 'user: "1000:1000"', 'user: "0:0"', 1)], "not \"1000:1000\"", {}),
    ("compose: writable root", [(C, "read_only: true", "read_only: false", 1)], "read_only", {}),
    ("compose: capabilities kept", [(C, "cap_drop: [ALL]", "cap_drop: [NET_RAW]", 1)], "cap_drop", {}),
    ("compose: privilege escalation", [(C, 'security_opt: ["no-new-privileges:true"]', 'security_opt: ["label=disable"]', 1)],
     "no-new-privileges", {}),
    ("compose: plaintext CA URL", [(C, "https://ca-2:9090\n", "http://ca-2:9090\n", 1)], "http://", {}),
    ("compose: healthcheck on the wrong port", [(C, '"/usr/local/bin/crank-probe", "https://localhost:8600/readyz"',
                                                '"/usr/local/bin/crank-probe", "https://localhost:8601/readyz"', 1)],
     "probes port 8601", {}),
    ("compose: healthcheck over http", [(C, '"probe", "https://localhost:8600/readyz"', '"probe", "http://localhost:8600/readyz"', 1)],
     "healthcheck", {}),
    ("compose: no healthcheck", [(C, '      test: ["CMD", "/usr/local/bin/crank", "probe", "https://localhost:8600/readyz"]\n    restart: unless-stopped\n\n  hello-world:',
                                  '      disable: true\n    restart: unless-stopped\n\n  hello-world:', 1)],
     "no healthcheck", {}),
    ("compose: probe port published", [(C, 'ports: ["127.0.0.1:8500:8500"]', 'ports: ["127.0.0.1:8500:8500", "8600:8600"]', 1)],
     "publishes port 8600", {}),
    ("compose: database port published", [(C, "    networks: [ca-db]\n", "    networks: [ca-db]\n    ports: [\"5432:5432\"]\n", 1)],
     "publishes port 5432", {}),
    ("compose: worker on the database network", [(C, "networks: [mesh, edge]", "networks: [mesh, edge, ca-db]", 1)],
     "can reach the database", {}),
    ("compose: database network not internal", [(C, "  ca-db:\n    internal: true", "  ca-db:\n    internal: false", 1)],
     "not internal", {}),
    ("compose: literal join token", [(C, "    CRANK_JOIN_TOKEN:\n", f"    CRANK_JOIN_TOKEN: {JWT}\n", 1)], "join token", {}),
    ("compose: literal password", [(C, "POSTGRES_PASSWORD_FILE: /run/secrets/postgres_password",
                                    "POSTGRES_PASSWORD: hunter2hunter2", 1)], "password", {}),
    ("compose: undeclared volume", [(C, '"caller-certs:/var/lib/crank"', '"caller-certz:/var/lib/crank"', 1)],
     "volume caller-certz is not declared", {}),
    ("kubernetes schema: unknown field", [(H, "imagePullPolicy: IfNotPresent", "imagePullPolicyy: IfNotPresent", 1)],
     "imagePullPolicyy", {}),
    ("kubernetes schema: wrong type", [(A, "replicas: 2", "replicas: two", 1)], "did not validate", {}),
    ("kubernetes: writable root", [(H, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", 1)],
     "readOnlyRootFilesystem", {}),
    ("kubernetes: root user", [(A, "runAsUser: 1000", "runAsUser: 0", 3)], "runAsUser is 0", {}),
    ("kubernetes: non-root not required", [(H, "runAsNonRoot: true", "runAsNonRoot: false", None)], "runAsNonRoot", {}),
    ("kubernetes: privilege escalation", [(A, "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1)],
     "allowPrivilegeEscalation", {}),
    ("kubernetes: capabilities kept", [(H, "drop: [ALL]", "drop: [NET_RAW]", 1)], "capabilities", {}),
    ("kubernetes: no seccomp", [(H, "type: RuntimeDefault", "type: Unconfined", None)], "seccompProfile", {}),
    ("kubernetes: readiness over http", [(H, "scheme: HTTPS\n              path: /readyz", "scheme: HTTP\n              path: /readyz", 1)],
     "readinessProbe is not an HTTPS", {}),
    ("kubernetes: liveness on another path", [(A, "path: /livez", "path: /health", 2)], "livenessProbe asks /health", {}),
    ("kubernetes: no resource limits", [(H, "            limits:\n              cpu: 500m\n              memory: 128Mi\n", "", 1)],
     "resources.limits", {}),
    ("kubernetes: no PodDisruptionBudget for a worker", [(H, "app.kubernetes.io/name: hello-world", "app.kubernetes.io/name: hello-wrld", -1)],
     "no PodDisruptionBudget", {}),
    ("kubernetes: no default deny", [(N, "  name: default-deny\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
                                      "  name: default-deny\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n", 1)],
     "default-deny", {}),
    ("kubernetes: workers reach the database", [(N, "  egress:\n    - to:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/component: ca\n",
                                                 "  egress:\n    - ports:\n        - protocol: TCP\n          port: 5432\n    - to:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/component: ca\n", 1)],
     "database port", {}),
    ("kubernetes: published Service", [(H, "  type: ClusterIP", "  type: NodePort", 1)], "only ClusterIP", {}),
    ("kubernetes: plaintext CA URL", [(H, "value: https://crank-ca:9090", "value: http://crank-ca:9090", 1)], "http://", {}),
    ("kubernetes: plaintext port", [(H, "- name: https\n              containerPort: 8500", "- name: http\n              containerPort: 8500", 1)],
     "not https or probe", {}),
    ("kubernetes: literal join token", [(H, "            - name: CRANK_JOIN_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: crank-join-hello-world\n                  key: token\n                  optional: true\n",
                                         f"            - name: CRANK_JOIN_TOKEN\n              value: {JWT}\n", 1)], "join token", {}),
    ("kubernetes: one CA replica", [(A, "replicas: 2", "replicas: 1", 1)], "two or more", {}),
    ("kubernetes: committed Secret", [(K, "  - network-policies.yaml\n", "  - network-policies.yaml\n  - secret.yaml\n", 1),
                                      ("kubernetes/secret.yaml", None, SECRET, None)], "a Secret is committed", {}),
    ("kustomize: missing resource", [(K, "  - network-policies.yaml", "  - network-policy.yaml", 1)], "FAIL: render", {}),
    ("fallback renderer: unsupported field", [(K, "resources:\n", "commonAnnotations:\n  a: b\nresources:\n", 1)],
     "unsupported by the fallback renderer", {"CRANK_DEPLOY_RENDERER": "python"}),
]


def copy_of():
    d = tempfile.mkdtemp(prefix="crank-deploy-selftest-")
    shutil.copy(os.path.join(deploy, "compose.yaml"), d)
    shutil.copytree(os.path.join(deploy, "kubernetes"), os.path.join(d, "kubernetes"))
    return d


def run(d, env):
    p = subprocess.run(["bash", script, d], capture_output=True, text=True, env={**os.environ, **env})
    return p.returncode, p.stdout + p.stderr


def mutate(d, edits):
    for fname, old, new, nth in edits:
        path = os.path.join(d, fname)
        if old is None:
            with open(path, "w") as f:
                f.write(new)
            continue
        with open(path) as f:
            text = f.read()
        spans = [m.start() for m in re.finditer(re.escape(old), text)]
        if not spans or (nth and len(spans) < abs(nth)):
            raise SystemExit(f"self-test is stale: {old!r} (occurrence {nth}) is not in {fname}")
        if nth is None:
            text = text.replace(old, new)
        else:
            i = spans[nth - 1] if nth > 0 else spans[nth]
            text = text[:i] + new + text[i + len(old):]
        with open(path, "w") as f:
            f.write(text)


bad = 0
for env, label in (({}, "the manifests as they are"), ({"CRANK_DEPLOY_RENDERER": "python"}, "with the fallback renderer")):
    d = copy_of()
    rc, out = run(d, env)
    shutil.rmtree(d)
    print(f"{'ok  ' if rc == 0 else 'FAIL'} {label}: {'pass' if rc == 0 else 'fail'}")
    if rc != 0:
        print(out)
        bad += 1
for name, edits, expected, env in CASES:
    d = copy_of()
    mutate(d, edits)
    rc, out = run(d, env)
    shutil.rmtree(d)
    caught = rc != 0 and expected in out
    first = next((line for line in out.splitlines() if expected in line), "")
    print(f"{'ok  ' if caught else 'FAIL'} {name}: {'caught: ' + first.strip() if caught else 'NOT caught (exit ' + str(rc) + ')'}")
    if not caught:
        print(out)
        bad += 1
print(f"self-test: {len(CASES) + 2 - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
PY
    exec "$py" "$work/selftest.py" "$self" "$deploy"
fi

# ---- validation --------------------------------------------------------------------
failed=()
step() { # NAME COMMAND...: runs one check, keeps going when it fails
    local name=$1
    shift
    if "$@"; then
        echo "ok: $name"
    else
        echo "FAIL: $name"
        failed+=("$name")
    fi
}

compose="$deploy/compose.yaml"
kdir="$deploy/kubernetes"
[ -f "$compose" ] || { echo "FAIL: no $compose" >&2; exit 1; }
[ -f "$kdir/kustomization.yaml" ] || { echo "FAIL: no $kdir/kustomization.yaml" >&2; exit 1; }

step "compose: Compose Specification schema ($("$venv/bin/check-jsonschema" --version | awk '{print $NF}'), vendor.compose-spec)" \
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose"

# Render: a real kustomize where there is one, and the fallback renderer in any case.
renderer=""
if [ "${CRANK_DEPLOY_RENDERER:-}" != python ]; then
    if command -v kustomize >/dev/null 2>&1; then
        renderer="kustomize $(kustomize version 2>/dev/null | head -1)"
        render_real() { kustomize build "$kdir" >"$work/rendered.yaml"; }
    elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
        renderer="kubectl kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize | awk '{print $NF}'))"
        render_real() { kubectl kustomize "$kdir" >"$work/rendered.yaml"; }
    fi
fi
step "kubernetes: render with the fallback renderer" "$py" "$work/checks.py" render "$kdir" "$work/fallback.yaml"
if [ -n "$renderer" ]; then
    step "kubernetes: render with $renderer" render_real
    if [ -s "$work/rendered.yaml" ] && [ -s "$work/fallback.yaml" ]; then
        step "kubernetes: the fallback renderer agrees with $renderer" \
            "$py" "$work/checks.py" compare "$work/rendered.yaml" "$work/fallback.yaml"
    fi
else
    echo "note: no kustomize binary (kustomize, kubectl); validating the fallback renderer's output"
    [ -f "$work/fallback.yaml" ] && cp "$work/fallback.yaml" "$work/rendered.yaml"
fi

if [ -s "$work/rendered.yaml" ]; then
    step "kubernetes: schema of Kubernetes $k8s_version, strict (kubernetes-validate)" \
        "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$k8s_version" "$work/rendered.yaml"
    step "rules: security layers 1 and 2, probes, HTTPS only, no secrets in the manifests" \
        "$py" "$work/checks.py" rules "$compose" "$work/rendered.yaml" "$kdir"
else
    failed+=("kubernetes: nothing rendered")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "validate-deploy: ${#failed[@]} check(s) failed:"
    printf '  - %s\n' "${failed[@]}"
    exit 1
fi
echo "validate-deploy: all checks passed ($deploy)"
