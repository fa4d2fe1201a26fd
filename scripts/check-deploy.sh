#!/usr/bin/env bash
# Checks deploy/kubernetes offline: every manifest validates strictly (unknown fields are
# errors) against the Kubernetes schemas that kubernetes-validate bundles; every
# kustomization names only files and directories that exist, and every manifest is used by
# one; every container image is one the kustomizations rewrite. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
k8s=deploy/kubernetes
mapfile -t manifests < <(find "$k8s" -name '*.yaml' ! -name kustomization.yaml | sort)
.venv/bin/kubernetes-validate --strict --quiet --kubernetes-version "${KUBERNETES_VERSION:-1.31.0}" "${manifests[@]}"
.venv/bin/python - "$k8s" "${manifests[@]}" <<'PY'
import pathlib, sys, yaml
root, manifests = pathlib.Path(sys.argv[1]), {pathlib.Path(m).resolve() for m in sys.argv[2:]}
problems, used, rewritten = [], set(), set()
for kustomization in sorted(root.rglob("kustomization.yaml")):
    doc = yaml.safe_load(kustomization.read_text())
    for resource in doc.get("resources", []):
        path = (kustomization.parent / resource).resolve()
        if path.is_dir():
            if not (path / "kustomization.yaml").exists():
                problems.append(f"{kustomization}: {resource} is a directory without kustomization.yaml")
        elif path.exists():
            used.add(path)
        else:
            problems.append(f"{kustomization}: {resource} does not exist")
    rewritten |= {image["name"] for image in doc.get("images", [])}
problems += [f"{m} is in no kustomization" for m in sorted(manifests - used)]
for manifest in sorted(manifests):
    for doc in yaml.safe_load_all(manifest.read_text()):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            image = container["image"]
            if image.startswith("feral-") and image not in rewritten:
                problems.append(f"{manifest}: image {image} is rewritten by no kustomization")
if problems:
    sys.exit("deploy/kubernetes:\n  " + "\n  ".join(problems))
print(f"deploy/kubernetes: {len(manifests)} manifests valid, every kustomization complete")
PY
