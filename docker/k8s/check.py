#!/usr/bin/env python3
"""Structure check of the Kubernetes manifests in docker/k8s (no cluster, no helm needed).

Every document parses and has apiVersion, kind and metadata.name; every probe points at a
port its container declares; resources are set; a PodDisruptionBudget selects the pods; the
secrets key comes from a Secret mounted where the config expects it; every secretKeyRef and
configMap names an object defined here. With --binary, the ConfigMap's config.toml and the
Deployment's environment are loaded by the real binary (`fhir-hub config`), Kubernetes'
service-link variables for the Service included.

Usage: check.py [--binary PATH] [DIR]   (prints "k8s manifests: N checks passed")
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml

checks = 0


def ok(cond, what):
    global checks
    if not cond:
        sys.exit(f"k8s manifests: FAILED: {what}")
    checks += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary")
    ap.add_argument("dir", nargs="?", default=str(pathlib.Path(__file__).parent))
    args = ap.parse_args()

    docs = []
    for f in sorted(pathlib.Path(args.dir).glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                docs.append(d)
    ok(docs, "no manifests")
    for d in docs:
        ok(isinstance(d, dict), f"a document is not a mapping: {d!r}")
        for k in ("apiVersion", "kind"):
            ok(isinstance(d.get(k), str) and d[k], f"{d.get('kind')} lacks {k}")
        ok(d.get("metadata", {}).get("name"), f"a {d['kind']} lacks metadata.name")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    deployments = by_kind.get("Deployment", {})
    ok(deployments, "no Deployment")
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    for name, dep in deployments.items():
        spec = dep["spec"]
        pod = spec["template"]
        labels = pod["metadata"]["labels"]
        ok(all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
           f"{name}: the selector does not select its pods")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
                if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
        ok(pdbs, f"{name}: no PodDisruptionBudget selects its pods")
        for p in pdbs:
            if "minAvailable" in p["spec"]:
                ok(p["spec"]["minAvailable"] < spec.get("replicas", 1),
                   f"{name}: PodDisruptionBudget minAvailable leaves no pod evictable")
        podspec = pod["spec"]
        sc = podspec.get("securityContext", {})
        ok(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, f"{name}: may run as root")
        ok(podspec.get("terminationGracePeriodSeconds", 30) > 30,
           f"{name}: terminationGracePeriodSeconds not above the hub's 30 s drain")
        volumes = {v["name"]: v for v in podspec.get("volumes", [])}
        for c in podspec["containers"]:
            cname = f"{name}/{c['name']}"
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            numbers = set(ports.values())
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                ok(probe in c, f"{cname}: no {probe}")
                get = c[probe].get("httpGet")
                ok(get and get.get("path") in ("/health", "/ready"),
                   f"{cname}: {probe} is not an httpGet on /health or /ready")
                port = get["port"]
                ok(port in ports if isinstance(port, str) else port in numbers,
                   f"{cname}: {probe} port {port!r} is not declared by the container")
            ok(c["readinessProbe"]["httpGet"]["path"] == "/ready", f"{cname}: readiness is not /ready")
            res = c.get("resources", {})
            ok(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
               and res.get("limits", {}).get("memory"), f"{cname}: resources not set")
            env = {e["name"]: e for e in c.get("env", [])}
            for e in env.values():
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    ok(ref["name"] in secrets and ref["key"] in secrets[ref["name"]].get("stringData", {}),
                       f"{cname}: env {e['name']} names a missing Secret key {ref}")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            # the config file: a ConfigMap key mounted at the path `serve --config` reads
            cfg_path = c["args"][c["args"].index("--config") + 1]
            ok(cfg_path in mounts, f"{cname}: --config {cfg_path} is not mounted")
            cm_vol = volumes[mounts[cfg_path]["name"]]["configMap"]
            cm = configmaps.get(cm_vol["name"])
            ok(cm and mounts[cfg_path]["subPath"] in cm["data"], f"{cname}: config map key missing")
            config_toml = cm["data"][mounts[cfg_path]["subPath"]]
            config = parse_toml(config_toml)
            # the secrets key: every key file lies in a mounted Secret, under its item path
            key_files = config.get("secrets", {}).get("key_files", {})
            ok(key_files and config["secrets"].get("active") in key_files,
               f"{cname}: secrets.active is not a key file")
            for kid, path in key_files.items():
                d, f = os.path.split(path)
                ok(d in mounts, f"{cname}: secrets key file {path} is not in a mounted volume")
                sec = volumes[mounts[d]["name"]].get("secret")
                ok(sec, f"{cname}: {d} is not a Secret volume")
                items = {i["path"]: i["key"] for i in sec.get("items", [])}
                key = items.get(f, f)
                ok(key in secrets[sec["secretName"]].get("stringData", {}),
                   f"{cname}: {path} names Secret key {key}, which {sec['secretName']} lacks")
            if args.binary:
                run_binary(args.binary, config_toml, env, secrets, by_kind.get("Service", {}))
    print(f"k8s manifests: {checks} checks passed")


def parse_toml(text):
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)


def run_binary(binary, config_toml, env, secrets, services):
    """`fhir-hub config` with the ConfigMap's file, the Deployment's environment (Secret
    values filled in) and the service-link variables Kubernetes injects for each Service."""
    vars_ = {"PATH": os.environ.get("PATH", "")}
    for e in env.values():
        if "value" in e:
            vars_[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            vars_[e["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    for name, svc in services.items():
        prefix = name.upper().replace("-", "_")
        first = svc["spec"]["ports"][0]["port"]
        vars_[f"{prefix}_SERVICE_HOST"] = "10.96.0.10"
        vars_[f"{prefix}_SERVICE_PORT"] = str(first)
        vars_[f"{prefix}_PORT"] = f"tcp://10.96.0.10:{first}"
        for p in svc["spec"]["ports"]:
            vars_[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
            base = f"{prefix}_PORT_{p['port']}_TCP"
            vars_[base] = f"tcp://10.96.0.10:{p['port']}"
            vars_[base + "_PROTO"] = "tcp"
            vars_[base + "_PORT"] = str(p["port"])
            vars_[base + "_ADDR"] = "10.96.0.10"
    # the image's environment (docker/Dockerfile)
    vars_.update({"HUB_SERVER__LISTEN": "0.0.0.0:8080", "HUB_GRPC__LISTEN": "0.0.0.0:8081",
                  "HUB_AUTH__MODE": "required"})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pathlib.Path(tmp, "config.toml")
        cfg.write_text(config_toml)
        out = subprocess.run([binary, "config", "--config", str(cfg)], env=vars_, cwd=tmp,
                             capture_output=True, text=True)
    ok(out.returncode == 0, f"fhir-hub config refuses the manifests' configuration: {out.stderr}")
    effective = json.loads(out.stdout)
    ok(effective["kafka"]["client"].get("sasl.password") == "***",
       "the Kafka SASL password from the Secret did not reach kafka.client")
    ok(effective["database"]["url"].startswith("postgres://"), "the database URL did not arrive")
    ok(effective["server"]["base_url"], "server.base_url is empty")


if __name__ == "__main__":
    main()
