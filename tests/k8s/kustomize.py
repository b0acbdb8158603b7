"""A small kustomize renderer for the subset of kustomize this repository uses.

``kubectl kustomize`` may not be installed where the tests run, so the manifests are rendered
here. Supported, exactly as kustomize does it:

* ``resources``: YAML files (multi-document) and directories holding a ``kustomization.yaml``;
* ``configMapGenerator`` with ``name``, ``namespace``, ``files`` (``path`` or ``key=path``) and
  ``literals`` (``key=value``);
* ``generatorOptions.disableNameSuffixHash: true`` -- required, since hashed names are not
  implemented (and this repository cannot use them: pods name their ConfigMap in an annotation).

Any other key is an error, so a kustomization that starts using more of kustomize fails here
loudly instead of being rendered wrongly. Where ``kubectl`` is installed,
``tests/k8s/test_manifests.py`` also checks that kubectl's kustomize renders the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}
GENERATOR_KEYS = {"name", "namespace", "files", "literals", "options"}


class KustomizeError(Exception):
    pass


@dataclass
class Rendered:
    objects: list[dict[str, Any]] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)
    """Every file read (kustomizations, resources, generator sources)."""


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return docs


def _split(entry: str, what: str, source: Path) -> tuple[str, str]:
    key, sep, value = entry.partition("=")
    if not sep or not key:
        raise KustomizeError(f"{source}: {what} {entry!r} is not key=value")
    return key, value


def render(directory: Path) -> Rendered:
    """Render the kustomization in ``directory`` (objects in resource order, generated last)."""
    directory = directory.resolve()
    kustomization_file = directory / KUSTOMIZATION
    if not kustomization_file.is_file():
        raise KustomizeError(f"{directory}: no {KUSTOMIZATION}")
    kustomization = yaml.safe_load(kustomization_file.read_text()) or {}
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kustomization_file}: unsupported keys {sorted(unknown)}")
    result = Rendered(files={kustomization_file})
    for entry in kustomization.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            sub = render(path)
            result.objects.extend(sub.objects)
            result.files |= sub.files
        elif path.is_file():
            result.objects.extend(load_yaml_documents(path))
            result.files.add(path)
        else:
            raise KustomizeError(f"{kustomization_file}: resource {entry!r} does not exist")
    generators = kustomization.get("configMapGenerator") or []
    options = kustomization.get("generatorOptions") or {}
    if generators and options != {"disableNameSuffixHash": True}:
        raise KustomizeError(
            f"{kustomization_file}: generatorOptions must be exactly disableNameSuffixHash: true"
        )
    for generator in generators:
        unknown = set(generator) - GENERATOR_KEYS
        if unknown:
            raise KustomizeError(f"{kustomization_file}: unsupported generator keys {unknown}")
        data: dict[str, str] = {}
        for entry in generator.get("literals") or []:
            key, value = _split(entry, "literal", kustomization_file)
            data[key] = value
        for entry in generator.get("files") or []:
            key, sep, rel = entry.partition("=")
            if not sep:
                key, rel = Path(entry).name, entry
            path = (directory / rel).resolve()
            if not path.is_relative_to(directory):
                raise KustomizeError(f"{kustomization_file}: {rel!r} is outside the root")
            data[key] = path.read_text()
            result.files.add(path)
        metadata: dict[str, Any] = {"name": generator["name"]}
        if "namespace" in generator:
            metadata["namespace"] = generator["namespace"]
        generator_options = generator.get("options") or {}
        if set(generator_options) - {"labels"}:
            raise KustomizeError(f"{kustomization_file}: generator options other than labels")
        if generator_options.get("labels"):
            metadata["labels"] = dict(generator_options["labels"])
        result.objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": metadata,
                "data": dict(sorted(data.items())),
            }
        )
    return result


def object_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    metadata = obj.get("metadata") or {}
    return (
        str(obj.get("apiVersion")),
        str(obj.get("kind")),
        str(metadata.get("namespace", "")),
        str(metadata.get("name")),
    )
