"""Sidecar injection for Kubernetes: one pure function over plain dicts, two front ends.

``mcp-sidecar inject -f workload.yaml`` (like ``istioctl kube-inject``) and the mutating admission
webhook (``mcp-sidecar webhook``, :mod:`sidecar.webhook`) both call :func:`plan_injection` on a pod
or pod template. It returns either a :class:`Skip` (with the reason) or the list of JSON Patch
(RFC 6902) ``add`` operations that inject the sidecar; the webhook sends those operations as its
patch, the CLI applies them with :func:`apply_patch`. One function decides and builds, so both
paths inject exactly the same thing.

What an injection adds to the pod (and nothing else):

* the sidecar as a Kubernetes *native sidecar*: the first init container, ``restartPolicy:
  Always`` (Kubernetes >= 1.29). It starts before the application containers, which only start
  once its startup probe saw an SVID (``/readyz``); it keeps running next to them, stops after
  them, and does not keep a Job from completing. It runs ``mcp-sidecar run -c
  /etc/mcp-sidecar/sidecar.yaml`` with a restricted security context, probes on the admin port
  (``/healthz`` liveness, ``/readyz`` startup and readiness) and resource requests/limits;
* ``SPIFFE_ENDPOINT_SOCKET=unix:///spiffe-workload-api/spire-agent.sock`` on that container and
  a read-only ``csi.spiffe.io`` volume (the SPIFFE CSI driver) mounted there -- never a hostPath;
* the sidecar's ConfigMap, mounted read-only at ``/etc/mcp-sidecar`` (name: the pod annotation
  ``mcp-sidecar.io/config-map``, else the injector's default);
* the label ``mcp-sidecar.io/inject: "true"`` (the ClusterSPIFFEID selects pods by it, so a pod
  injected because of its namespace label gets a SPIFFE ID too);
* the annotation ``mcp-sidecar.io/status`` recording what was injected. A pod carrying it is never
  injected again (idempotent), and neither is one that already has a container named
  ``mcp-sidecar``.

Pods are skipped (returned unchanged) when they opt out (label ``mcp-sidecar.io/inject:
"false"``), use ``hostNetwork`` (the sidecar's loopback-only outbound port would be the node's
loopback, open to every process on the node), or live in a system namespace
(:data:`SYSTEM_NAMESPACES`). Anything that cannot be injected safely -- a volume name already taken,
an invalid label value, a pod without containers -- raises :class:`InjectionError`.

The injection core is pure: no I/O, no aiohttp, no Kubernetes client, and inputs are never
modified. Only the command-line part at the end (``run_from_args``) reads and writes files.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from sidecar import strict_yaml
from sidecar.errors import ConfigErrors, problem_detail

__all__ = [
    "ADMIN_PORT",
    "CONFIG_DIR",
    "CONFIG_FILE",
    "CONFIG_MAP_ANNOTATION",
    "CONFIG_VOLUME",
    "CONTAINER_NAME",
    "CSI_DRIVER",
    "DEFAULT_CONFIG_MAP",
    "DEFAULT_IMAGE",
    "INJECT_LABEL",
    "NAMESPACE_LABEL",
    "POD_TEMPLATE_PATHS",
    "STATUS_ANNOTATION",
    "SYSTEM_NAMESPACES",
    "TEMPLATE_VERSION",
    "WORKLOAD_API_DIR",
    "WORKLOAD_API_SOCKET",
    "WORKLOAD_API_VOLUME",
    "InjectOptions",
    "InjectionError",
    "PatchOp",
    "Skip",
    "apply_patch",
    "dump_documents",
    "escape_pointer",
    "inject_object",
    "inject_text",
    "load_documents",
    "plan_injection",
    "sidecar_container",
]

PatchOp = dict[str, Any]
"""One JSON Patch operation: ``{"op": "add", "path": "/spec/volumes/-", "value": {...}}``."""

INJECT_LABEL: Final = "mcp-sidecar.io/inject"
"""Pod label: ``"true"`` asks for injection (and is what the ClusterSPIFFEID selects), ``"false"``
opts out even in a namespace with injection enabled."""
NAMESPACE_LABEL: Final = "mcp-sidecar.io/injection"
"""Namespace label: ``enabled`` injects every pod of the namespace (unless it opts out),
``disabled`` none. Only the webhook's selectors look at it (the webhook cannot see namespace
labels in an AdmissionReview)."""
STATUS_ANNOTATION: Final = "mcp-sidecar.io/status"
CONFIG_MAP_ANNOTATION: Final = "mcp-sidecar.io/config-map"
TEMPLATE_VERSION: Final = "v1"
"""Version of what an injection adds; recorded in the status annotation."""

CONTAINER_NAME: Final = "mcp-sidecar"
CONFIG_VOLUME: Final = "mcp-sidecar-config"
WORKLOAD_API_VOLUME: Final = "mcp-sidecar-workload-api"
CONFIG_DIR: Final = "/etc/mcp-sidecar"
CONFIG_FILE: Final = "sidecar.yaml"
WORKLOAD_API_DIR: Final = "/spiffe-workload-api"
WORKLOAD_API_SOCKET: Final = f"unix://{WORKLOAD_API_DIR}/spire-agent.sock"
CSI_DRIVER: Final = "csi.spiffe.io"
ADMIN_PORT: Final = 15000
"""The sidecar's admin listener; the injected ConfigMap must say ``admin.listen: 0.0.0.0:15000``
so that the kubelet's probes (sent to the pod IP) reach it."""
SIDECAR_UID: Final = 10001
"""The non-root user of the image (``Dockerfile``)."""

DEFAULT_IMAGE: Final = "mcp-sidecar:dev"
DEFAULT_CONFIG_MAP: Final = "mcp-sidecar"
DEFAULT_RELOAD_INTERVAL: Final = 30.0
"""How often the webhook checks its TLS files for a new certificate (seconds)."""

SYSTEM_NAMESPACES: Final = frozenset(
    {
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "local-path-storage",
        "spire-system",
        "mcp-sidecar-system",
    }
)
"""Never injected: Kubernetes' own, kind's storage provisioner, SPIRE and the injector itself
(injecting those could deadlock the cluster with a ``failurePolicy: Fail`` webhook)."""

POD_TEMPLATE_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}
"""Where each workload kind keeps its pod (template): ``()`` is the object itself."""


class InjectionError(ValueError):
    """The pod asked for injection but cannot be injected safely; the message says why."""


@dataclass(frozen=True, slots=True)
class Skip:
    """The pod is left unchanged. ``warn`` is true where the pod asked for injection and does not
    get it (the webhook then returns an admission warning)."""

    reason: str
    warn: bool = False


def _default_resources() -> dict[str, dict[str, str]]:
    return {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectOptions:
    """What the injector adds; the CLI flags and webhook flags of the same names set these."""

    image: str = DEFAULT_IMAGE
    config_map: str = DEFAULT_CONFIG_MAP
    """ConfigMap (key ``sidecar.yaml``) for pods without a ``mcp-sidecar.io/config-map``
    annotation."""
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=_default_resources)


def escape_pointer(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def sidecar_container(image: str, options: InjectOptions) -> dict[str, Any]:
    """The injected native-sidecar container (an init container with ``restartPolicy: Always``)."""

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        "restartPolicy": "Always",
        "args": ["run", "-c", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": WORKLOAD_API_SOCKET}],
        "ports": [{"name": "mcp-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        # The application containers start only once this succeeds: the sidecar holds an SVID.
        # Up to 3 minutes, for the registration entry to reach the node's SPIRE agent.
        "startupProbe": probe("/readyz", 2, 90),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 3),
        "resources": copy.deepcopy({k: dict(v) for k, v in options.resources.items()}),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": WORKLOAD_API_VOLUME, "mountPath": WORKLOAD_API_DIR, "readOnly": True},
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }


def _volumes(config_map: str) -> list[dict[str, Any]]:
    return [
        {"name": WORKLOAD_API_VOLUME, "csi": {"driver": CSI_DRIVER, "readOnly": True}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
    ]


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InjectionError(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _list(value: object, what: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InjectionError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _names(items: Sequence[Any], what: str) -> list[str]:
    names = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InjectionError(f"{what}[{index}] must be a mapping")
        names.append(str(item.get("name", "")))
    return names


def _valid_config_map_name(name: str) -> bool:
    """A DNS-1123 subdomain (what a ConfigMap name must be)."""
    if not 0 < len(name) <= 253:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    return (
        set(name) <= allowed
        and name[0].isalnum()
        and name[-1].isalnum()
        and all(part and part[0].isalnum() and part[-1].isalnum() for part in name.split("."))
    )


def plan_injection(
    pod: Mapping[str, Any],
    namespace: str | None = None,
    options: InjectOptions | None = None,
) -> list[PatchOp] | Skip:
    """Decide about one pod (or pod template: ``{metadata, spec}``) and build the injection.

    Returns the JSON Patch ``add`` operations (paths relative to ``pod``) or a :class:`Skip`.
    ``namespace`` is the pod's namespace where known (the AdmissionReview's, else the object's).
    Raises :class:`InjectionError` when the pod should be injected but cannot be safely.
    """
    options = options or InjectOptions()
    if not isinstance(pod, Mapping):
        raise InjectionError(f"a pod must be a mapping, got {type(pod).__name__}")
    metadata = _mapping(pod.get("metadata"), "metadata")
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    annotations = _mapping(metadata.get("annotations"), "metadata.annotations")
    spec = _mapping(pod.get("spec"), "spec")

    # Opting out wins over everything, then "already done", then the pods we never touch.
    label = labels.get(INJECT_LABEL)
    if label == "false":
        return Skip(f"opted out (label {INJECT_LABEL}=false)")
    if label is not None and label != "true":
        raise InjectionError(
            f'label {INJECT_LABEL} must be "true" or "false", got {json.dumps(label)}'
        )
    if STATUS_ANNOTATION in annotations:
        return Skip(f"already injected (annotation {STATUS_ANNOTATION})")
    containers = _list(spec.get("containers"), "spec.containers")
    init_containers = _list(spec.get("initContainers"), "spec.initContainers")
    container_names = _names(containers, "spec.containers") + _names(
        init_containers, "spec.initContainers"
    )
    if CONTAINER_NAME in container_names:
        return Skip(f"already has a container named {CONTAINER_NAME!r}")
    namespace = namespace or metadata.get("namespace") or None
    if namespace in SYSTEM_NAMESPACES:
        return Skip(f"system namespace {namespace}", warn=True)
    if spec.get("hostNetwork") is True:
        return Skip(
            "hostNetwork pod (the sidecar's loopback port would be open to the whole node)",
            warn=True,
        )
    if not containers:
        raise InjectionError("spec.containers is empty: nothing to put a sidecar next to")

    for container in [*containers, *init_containers]:
        for port in _list(container.get("ports"), "ports"):
            if isinstance(port, Mapping) and port.get("containerPort") == ADMIN_PORT:
                raise InjectionError(
                    f"container {container.get('name')!r} uses port {ADMIN_PORT}, the sidecar's "
                    "admin port (probes, metrics)"
                )
    volumes = _list(spec.get("volumes"), "spec.volumes")
    taken = set(_names(volumes, "spec.volumes")) & {WORKLOAD_API_VOLUME, CONFIG_VOLUME}
    if taken:
        raise InjectionError(f"volume name already used: {', '.join(sorted(taken))}")
    config_map = annotations.get(CONFIG_MAP_ANNOTATION, options.config_map)
    if not isinstance(config_map, str) or not _valid_config_map_name(config_map):
        raise InjectionError(
            f"annotation {CONFIG_MAP_ANNOTATION} must name a ConfigMap (a DNS-1123 subdomain), "
            f"got {json.dumps(config_map)}"
        )

    status = json.dumps(
        {
            "configMap": config_map,
            "container": CONTAINER_NAME,
            "image": options.image,
            "template": TEMPLATE_VERSION,
            "volumes": [WORKLOAD_API_VOLUME, CONFIG_VOLUME],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    ops: list[PatchOp] = []

    def add(path: str, value: Any) -> None:
        ops.append({"op": "add", "path": path, "value": value})

    new_labels = {INJECT_LABEL: "true"} if label is None else {}
    new_annotations = {STATUS_ANNOTATION: status}
    if "metadata" not in pod or pod.get("metadata") is None:
        add("/metadata", {"labels": new_labels, "annotations": new_annotations})
    else:
        for key, existing, additions in (
            ("labels", metadata.get("labels"), new_labels),
            ("annotations", metadata.get("annotations"), new_annotations),
        ):
            if not additions:
                continue
            if existing is None:
                add(f"/metadata/{key}", dict(additions))
            else:
                for name, value in additions.items():
                    add(f"/metadata/{key}/{escape_pointer(name)}", value)

    if "spec" not in pod or pod.get("spec") is None:  # unreachable: containers were required
        raise InjectionError("spec is missing")
    container = sidecar_container(options.image, options)
    # First init container: started before any other init container, so those may use it too.
    if spec.get("initContainers") is None:
        add("/spec/initContainers", [container])
    else:
        add("/spec/initContainers/0", container)
    new_volumes = _volumes(config_map)
    if spec.get("volumes") is None:
        add("/spec/volumes", new_volumes)
    else:
        for volume in new_volumes:
            add("/spec/volumes/-", volume)
    return ops


# ----------------------------------------------------------------------------- applying patches


def _parse_pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON Pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def apply_patch(document: Any, ops: Sequence[Mapping[str, Any]]) -> Any:
    """A copy of ``document`` with the ``add`` operations applied (the only op injection emits).

    Follows RFC 6902 ``add``: on a mapping it sets the member (adding or replacing); on a list it
    inserts before the index, or appends for ``-``.
    """
    result = copy.deepcopy(document)
    for op in ops:
        if op.get("op") != "add":
            raise ValueError(f"only 'add' operations are supported, got {op.get('op')!r}")
        tokens = _parse_pointer(str(op["path"]))
        value = copy.deepcopy(op["value"])
        target = result
        for token in tokens[:-1]:
            target = target[int(token)] if isinstance(target, list) else target[token]
        last = tokens[-1]
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                index = int(last)
                if not 0 <= index <= len(target):
                    raise IndexError(f"index {index} out of range in {op['path']}")
                target.insert(index, value)
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise TypeError(f"cannot add into a {type(target).__name__} at {op['path']}")
    return result


# ------------------------------------------------------------------------ whole Kubernetes objects


def _object_name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{str(obj.get('kind', '?')).lower()}/{name or '?'}"


def inject_object(
    obj: Any, options: InjectOptions | None = None
) -> tuple[Any, list[tuple[str, Skip | None]]]:
    """Inject every pod (template) in one Kubernetes object (``kind: List`` included).

    Returns the new object (other kinds unchanged) and, for each workload found, its name
    (``deployment/math``) with ``None`` if it was injected or the :class:`Skip`. Raises
    :class:`InjectionError` naming the object.
    """
    options = options or InjectOptions()
    results: list[tuple[str, Skip | None]] = []
    if not isinstance(obj, Mapping):
        return obj, results
    if obj.get("kind") == "List":
        items = [inject_object(item, options) for item in _list(obj.get("items"), "items")]
        for _, item_results in items:
            results.extend(item_results)
        return {**obj, "items": [item for item, _ in items]}, results
    path = POD_TEMPLATE_PATHS.get(str(obj.get("kind")))
    if path is None:
        return obj, results
    name = _object_name(obj)
    template: Any = obj
    for key in path:
        template = template.get(key) if isinstance(template, Mapping) else None
    if not isinstance(template, Mapping):
        raise InjectionError(f"{name}: no pod template at {'.'.join(path)}")
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    try:
        plan = plan_injection(template, namespace, options)
    except InjectionError as exc:
        raise InjectionError(f"{name}: {exc}") from None
    if isinstance(plan, Skip):
        results.append((name, plan))
        return obj, results
    prefix = "".join(f"/{escape_pointer(key)}" for key in path)
    ops = [{**op, "path": prefix + op["path"]} for op in plan]
    results.append((name, None))
    return apply_patch(obj, ops), results


# ------------------------------------------------------------------- `mcp-sidecar inject` (CLI)


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors/aliases (every object is written out in full)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_documents(text: str, *, source: str = "<manifest>") -> list[Any]:
    """Every non-empty YAML document of a (multi-document) manifest, read as Kubernetes reads
    it; duplicate keys and syntax errors are ``ConfigErrors`` (``sidecar.strict_yaml``)."""
    return strict_yaml.load_documents(text, source=source)


def dump_documents(documents: Sequence[Any]) -> str:
    """Multi-document YAML, keys in their original order, long lines never folded."""
    return yaml.dump_all(
        documents,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,
        explicit_start=False,
    )


def inject_text(
    text: str, options: InjectOptions | None = None, *, source: str = "<manifest>"
) -> tuple[str, list[str]]:
    """Inject every workload of a YAML manifest; returns the new manifest and one note per skipped
    workload. Raises :class:`InjectionError` (every problem, one per line) or ``ConfigErrors``
    (not valid YAML, duplicate keys)."""
    documents = load_documents(text, source=source)
    output: list[Any] = []
    notes: list[str] = []
    problems: list[str] = []
    for index, document in enumerate(documents):
        try:
            injected, results = inject_object(document, options)
        except InjectionError as exc:
            problems.append(f"document {index + 1}: {exc}")
            continue
        output.append(injected)
        notes.extend(f"{name}: not injected: {skip.reason}" for name, skip in results if skip)
    if problems:
        raise InjectionError("\n".join(problems))
    return dump_documents(output), notes


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="manifest to inject (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, "
        "Jobs, CronJobs, Lists; other objects pass through unchanged); '-' reads stdin",
    )
    parser.add_argument(
        "--config-map",
        default=DEFAULT_CONFIG_MAP,
        metavar="NAME",
        help=f"ConfigMap with the sidecar's {CONFIG_FILE} for pods without a "
        f"{CONFIG_MAP_ANNOTATION} annotation (default: %(default)s)",
    )
    parser.add_argument(
        "--image", default=DEFAULT_IMAGE, help="sidecar image (default: %(default)s)"
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", default="-", help="where to write (default: stdout)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as stream:
                text = stream.read()
    except OSError as exc:
        print(f"{args.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    options = InjectOptions(image=args.image, config_map=args.config_map)
    try:
        output, notes = inject_text(text, options, source=args.filename)
    except InjectionError as exc:
        for line in str(exc).splitlines():
            print(f"{args.filename}: {line}", file=sys.stderr)
        return 1
    except ConfigErrors as exc:
        for problem in exc.problems:
            where = "" if problem.path == args.filename else f"{problem.path}: "
            detail = problem_detail(problem)
            print(f"{args.filename}: not valid YAML: {where}{detail}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"{args.filename}: {note}", file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(output)
    else:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(output)
    return 0
