#!/usr/bin/env python3
"""Render deploy/k8s/ the way ``kubectl kustomize`` does, for the part of kustomize it uses.

``make test`` checks the Kubernetes manifests on machines that may have no ``kubectl``,
so the tests need the rendered objects without it. This renders exactly the subset the
kustomizations under deploy/k8s/ use, ``resources`` (files and kustomization folders) and
inline JSON 6902 ``patches`` (add, remove, replace, test), and refuses anything else, so
that a new kustomize feature in those files fails loudly here instead of being rendered
differently. Where ``kubectl`` exists, tests/test_k8s_manifests.py checks that both agree.

Usage: ``python deploy/render_k8s.py deploy/k8s/overlays/gpu`` prints the objects as YAML.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches"}
SUPPORTED_TARGET_FIELDS = {"kind", "name"}
# kustomize reads a target's name as a regular expression; names like these mean themselves
PLAIN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class UnsupportedKustomization(ValueError):
    """The kustomization uses something this renderer does not implement."""


class PatchError(ValueError):
    """A JSON 6902 operation could not apply. kustomize refuses these too, except a
    ``replace`` of a missing key, which it adds; RFC 6902 (and this) refuses it."""


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no kustomization.yaml")


def _pointer(path: str) -> list[str]:
    """RFC 6901: ``/a/b~1c`` is ["a", "b/c"]."""
    if not path.startswith("/"):
        raise PatchError(f"{path!r}: a JSON pointer starts with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list, token: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{token!r} is no array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"index {index} is past the end of a list of {len(container)}")
    return index


def _parent(document: Any, tokens: list[str]) -> Any:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise PatchError(f"/{'/'.join(tokens)}: {token!r} does not exist")
    return node


def apply_json_patch(document: Any, operations: list[dict]) -> Any:
    """``document`` after RFC 6902 ``add``/``remove``/``replace``/``test`` operations."""
    document = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        if op not in ("add", "remove", "replace", "test"):
            raise UnsupportedKustomization(f"JSON patch op {op!r} is not supported")
        tokens = _pointer(path)
        parent, last = _parent(document, tokens), tokens[-1]
        if isinstance(parent, list):
            index = _index(parent, last, allow_end=op == "add")
            if op == "add":
                parent.insert(index, copy.deepcopy(operation["value"]))
            elif op == "remove":
                del parent[index]
            elif op == "replace":
                parent[index] = copy.deepcopy(operation["value"])
            elif parent[index] != operation["value"]:
                raise PatchError(f"test failed: {path} is {parent[index]!r}")
        elif isinstance(parent, dict):
            if op != "add" and last not in parent:
                raise PatchError(f"{path} does not exist")
            if op == "remove":
                del parent[last]
            elif op == "test":
                if parent[last] != operation["value"]:
                    raise PatchError(f"test failed: {path} is {parent[last]!r}")
            else:
                parent[last] = copy.deepcopy(operation["value"])
        else:
            raise PatchError(f"{path}: the parent is neither a list nor a mapping")
    return document


def _matches(target: dict, resource: dict) -> bool:
    return resource.get("kind") == target["kind"] and resource["metadata"]["name"] == target["name"]


def _apply_patch(resources: list[dict], patch: dict, where: Path) -> list[dict]:
    extra = set(patch) - {"target", "patch"}
    target = patch.get("target") or {}
    if extra or "patch" not in patch or set(target) != SUPPORTED_TARGET_FIELDS:
        raise UnsupportedKustomization(
            f"{where}: only inline JSON 6902 patches with a target of kind and name"
        )
    if not PLAIN_NAME.match(target["name"]):
        raise UnsupportedKustomization(f"{where}: target name {target['name']!r} is a pattern")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise UnsupportedKustomization(f"{where}: a strategic-merge patch; use JSON 6902")
    hits = [i for i, resource in enumerate(resources) if _matches(target, resource)]
    if not hits:
        raise PatchError(f"{where}: no {target['kind']} named {target['name']}")
    for i in hits:
        resources[i] = apply_json_patch(resources[i], operations)
    return resources


def _load_file(path: Path) -> list[dict]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for document in documents:
        if not isinstance(document, dict) or "kind" not in document:
            raise ValueError(f"{path}: every document must be a Kubernetes object")
    return documents


def render(folder: Path | str) -> list[dict]:
    """The objects the kustomization in ``folder`` produces, in resource order."""
    folder = Path(folder)
    path = _kustomization_file(folder)
    kustomization = yaml.safe_load(path.read_text()) or {}
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise UnsupportedKustomization(f"{path}: {', '.join(sorted(unsupported))}")
    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        source = folder / entry
        resources += render(source) if source.is_dir() else _load_file(source)
    seen: set[tuple] = set()
    for resource in resources:
        key = identity(resource)
        if key in seen:
            raise ValueError(f"{path}: {key} appears twice")
        seen.add(key)
    for patch in kustomization.get("patches", []):
        resources = _apply_patch(resources, patch, path)
    return resources


def identity(resource: dict) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): what kustomize calls a resource's id."""
    metadata = resource["metadata"]
    return (
        resource["apiVersion"],
        resource["kind"],
        metadata.get("namespace", ""),
        metadata["name"],
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {Path(argv[0]).name} KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(render(argv[1]), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
