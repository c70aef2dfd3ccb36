#!/usr/bin/env python3
"""Renders every overlay and checks it offline, as CI does.

1. `kubectl kustomize` renders deploy/overlays/<instance> (the configuration
   comes from config/, outside the overlay, hence the load restrictor flag).
2. `kubernetes-validate --strict` validates every resource against the
   Kubernetes schemas it ships (no cluster, no network).
3. The rules this repository promises: one namespace per instance and nothing
   outside it; the overlay's own registry; non-root, read-only containers with
   probes, requests and limits; NetworkPolicies that admit only the calls in
   ARCHITECTURE.md and no other namespace (DNS aside); the ConfigMap rebuilt as
   a config directory passes `sovra check-config` for its instance.

Usage: deploy/check.py [path/to/sovra]   (default: target/debug/sovra)
"""
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAYS = {"global": "registry.sovra.example/", "china": "registry.sovra.example.cn/"}
# Who may call whom (ARCHITECTURE.md), plus the instance's gateway.
CALLERS = {
    "identity": {"relationships", "commerce", "gateway"},
    "relationships": {"commerce", "gateway"},
    "commerce": {"gateway"},
}
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def render(instance):
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone",
         str(ROOT / "deploy" / "overlays" / instance)],
        check=True, capture_output=True, text=True).stdout
    return out, [d for d in yaml.safe_load_all(out) if d]


def check_pods(instance, docs):
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            fail(f"{instance}/{name}: pod may run as root")
        for c in spec["containers"]:
            if not c["image"].startswith(OVERLAYS[instance]):
                fail(f"{instance}/{name}: image {c['image']} is not from {OVERLAYS[instance]}")
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
                fail(f"{instance}/{name}: container is writable or may escalate")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in c:
                    fail(f"{instance}/{name}: no {probe}")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                fail(f"{instance}/{name}: no resource requests and limits")
            if c["args"][:2] != ["serve", name]:
                fail(f"{instance}/{name}: runs {c['args']}")


def check_network(instance, docs):
    namespace = f"sovra-{instance}"
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] != "Namespace" and ns != namespace:
            fail(f"{instance}: {d['kind']}/{d['metadata']['name']} is in namespace {ns}")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if not any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        fail(f"{instance}: no default-deny NetworkPolicy")
    for p in policies:
        target = p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in p["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    fail(f"{instance}: {p['metadata']['name']} admits traffic from outside the namespace")
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                caller = labels.get("app.kubernetes.io/name") or labels.get("app.kubernetes.io/component")
                ports = {p.get("port") for p in rule.get("ports", [])}
                if ports == {9464} and caller == "prometheus":
                    continue  # scraping /metrics, the admin port
                if target and caller not in CALLERS.get(target, set()):
                    fail(f"{instance}: {p['metadata']['name']} lets {caller} call {target}")
        for rule in p["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "namespaceSelector" in peer and p["metadata"]["name"] != "allow-dns":
                    fail(f"{instance}: {p['metadata']['name']} allows egress to another namespace")


def check_config(instance, docs, sovra):
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sovra-config")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    with tempfile.TemporaryDirectory() as tmp:
        for item in volume["configMap"]["items"]:
            path = pathlib.Path(tmp) / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cm["data"][item["key"]])
        region = next(d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"].startswith("sovra-instance"))["data"]["region"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOVRA")}
        r = subprocess.run([sovra, "check-config", "--config-dir", tmp, "--instance", instance,
                            "--region", region], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            fail(f"{instance}: the ConfigMap's configuration is refused: {r.stderr.strip()}")
        else:
            print(f"ok   {instance}: {r.stdout.strip()}")


def main():
    sovra = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "debug" / "sovra")
    for instance in OVERLAYS:
        text, docs = render(instance)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        v = subprocess.run(["kubernetes-validate", "--strict", "--quiet", f.name],
                           capture_output=True, text=True)
        os.unlink(f.name)
        if v.returncode != 0:
            fail(f"{instance}: kubernetes-validate --strict: {v.stdout}{v.stderr}")
        else:
            print(f"ok   {instance}: {len(docs)} resources valid (kubernetes-validate --strict)")
        check_pods(instance, docs)
        check_network(instance, docs)
        check_config(instance, docs, sovra)
    if failures:
        sys.exit(f"{len(failures)} deployment check(s) failed")
    print("deploy: every check passed")


if __name__ == "__main__":
    main()
