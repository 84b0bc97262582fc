"""Verifies the committed zoo artifacts:  cd gpu-runner && /usr/bin/python3 -m pytest zoo/tests
* every file listed in gpu-runner/models/SHA256SUMS exists and matches its checksum (a corrupted artifact fails);
* every manifest.json validates against formats/manifest.schema.json and matches its ONNX graphs;
* every LoRA add-on parses as safetensors and its keys map onto the bundle's LoRA targets."""

import hashlib
import json
import os

from zoo import paths
from zoo.export.manifest import validate_manifest
from zoo.export.safetensors import kohya_key, load_safetensors

MODELS = paths.MODELS_DIR


def test_checksums():
    lines = open(os.path.join(MODELS, "SHA256SUMS")).read().split("\n")
    n = 0
    for line in lines:
        if not line.strip():
            continue
        digest, rel = line.split("  ", 1)
        p = os.path.join(MODELS, rel)
        assert os.path.exists(p), f"missing {rel}"
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == digest, f"checksum mismatch: {rel}"
        n += 1
    assert n > 0


def manifests():
    for r, _, fs in os.walk(MODELS):
        if "manifest.json" in fs:
            yield r


def test_manifests_match_graphs():
    found = 0
    for d in manifests():
        validate_manifest(json.load(open(os.path.join(d, "manifest.json"))), d)
        found += 1
    assert found > 0


def test_lora_addons_map_to_targets():
    for d in manifests():
        m = json.load(open(os.path.join(d, "manifest.json")))
        if m.get("kind") != "diffusion":
            continue
        targets = {t["module"]: t for t in m["lora"]["targets"]}
        kohya = {kohya_key(p): p for p in targets}
        addons = os.path.join(d, "addons")
        if not os.path.isdir(addons):
            continue
        for f in os.listdir(addons):
            if not f.endswith(".safetensors"):
                continue
            tensors, meta = load_safetensors(os.path.join(addons, f))
            for k, v in tensors.items():
                if k.startswith("lora_unet_"):
                    base, kind = k.split(".", 1)
                    t = targets[kohya[base]]
                    if kind == "lora_down.weight":
                        assert v.shape[1] == t["in_features"], k
                        assert tuple(v.shape[2:]) == ((3, 3) if t["kind"] == "conv3x3" else ()), k
                    elif kind == "lora_up.weight":
                        assert v.shape[0] == t["out_features"], k
                else:
                    assert k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")), k
                    assert k[5:].rsplit(".", 2)[0] in targets, k


if __name__ == "__main__":
    test_checksums()
    test_manifests_match_graphs()
    test_lora_addons_map_to_targets()
    print("ok")
