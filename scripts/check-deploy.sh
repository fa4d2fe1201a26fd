#!/usr/bin/env bash
# Checks deploy/kubernetes offline. Every kustomization names only files and directories
# that exist, and every manifest is used by one. Each set-up a user applies (the
# directory itself, ha/, cpu/, gpu/) is rendered with `kubectl kustomize` and its output
# validates strictly (unknown fields are errors) against the Kubernetes schemas that
# kubernetes-validate bundles; in it every container image is one the kustomization
# rewrote, and the CPU and GPU set-ups give their workers what they say. Part of
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
k8s=deploy/kubernetes
setups=("$k8s" "$k8s/ha" "$k8s/cpu" "$k8s/gpu")
mapfile -t manifests < <(find "$k8s" -name '*.yaml' ! -name kustomization.yaml | sort)
.venv/bin/python - "$k8s" "${manifests[@]}" <<'PY'
import pathlib, sys, yaml
root, manifests = pathlib.Path(sys.argv[1]), {pathlib.Path(m).resolve() for m in sys.argv[2:]}
problems, used = [], set()
for kustomization in sorted(root.rglob("kustomization.yaml")):
    doc = yaml.safe_load(kustomization.read_text())
    for entry in doc.get("resources", []) + doc.get("components", []):
        path = (kustomization.parent / entry).resolve()
        if path.is_dir():
            if not (path / "kustomization.yaml").exists():
                problems.append(f"{kustomization}: {entry} is a directory without kustomization.yaml")
        elif path.exists():
            used.add(path)
        else:
            problems.append(f"{kustomization}: {entry} does not exist")
problems += [f"{m} is in no kustomization" for m in sorted(manifests - used)]
if problems:
    sys.exit("deploy/kubernetes:\n  " + "\n  ".join(problems))
PY

kubectl=.venv/bin/kubectl
if [ ! -x "$kubectl" ]; then
  echo "deploy/kubernetes: no kubectl (bootstrap installs it on x86_64 only): manifests validated unrendered"
  .venv/bin/kubernetes-validate --strict --quiet --kubernetes-version "${KUBERNETES_VERSION:-1.31.0}" "${manifests[@]}"
  exit 0
fi
out=target/deploy-check
mkdir -p "$out"
for setup in "${setups[@]}"; do
  name=$(basename "$setup")
  "$kubectl" kustomize "$setup" >"$out/$name.yaml"
  .venv/bin/kubernetes-validate --strict --quiet --kubernetes-version "${KUBERNETES_VERSION:-1.31.0}" "$out/$name.yaml"
done
.venv/bin/python - "$out" <<'PY'
import pathlib, sys, yaml
out, problems = pathlib.Path(sys.argv[1]), []
def workers(name):
    docs = [d for d in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if d]
    for doc in docs:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if container["image"].startswith("feral-"):
                problems.append(f"{name}: image {container['image']} is not rewritten to a registry")
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "feral-worker"]
for name in ["kubernetes", "ha", "cpu", "gpu"]:
    found = workers(name)
    if len(found) != 1:
        problems.append(f"{name}: {len(found)} worker StatefulSets, not one")
        continue
    pod = found[0]
    worker = pod["containers"][0]
    gpus = worker.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if name == "cpu" and (worker["args"] != ["--devices", "cpu"] or gpus is not None):
        problems.append(f"cpu: workers train on {worker['args']} with {gpus} GPUs")
    if name == "gpu" and (worker["args"] != ["--devices", "auto"] or not gpus or not pod.get("tolerations")):
        problems.append(f"gpu: workers train on {worker['args']} with {gpus} GPUs and tolerations {pod.get('tolerations')}")
if problems:
    sys.exit("deploy/kubernetes:\n  " + "\n  ".join(problems))
print("deploy/kubernetes: kubernetes, ha, cpu and gpu render and validate; every manifest is used")
PY
