"""Sidecar injection (sidecar/inject.py) and ``mcp-sidecar inject``.

Golden files: ``tests/golden/inject/NAME.in.yaml`` -> ``NAME.out.yaml`` is exactly what
``mcp-sidecar inject -f NAME.in.yaml`` prints (byte for byte). After an intended change of the
injection, regenerate them with ``UPDATE_GOLDEN=1 pytest tests/test_inject.py`` and review the diff.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import inject
from sidecar.cli import main
from sidecar.inject import (
    CONFIG_MAP_ANNOTATION,
    INJECT_LABEL,
    STATUS_ANNOTATION,
    InjectionError,
    InjectOptions,
    Skip,
    apply_patch,
    inject_object,
    inject_text,
    load_documents,
    plan_injection,
)

GOLDEN = Path(__file__).parent / "golden" / "inject"
CASES = sorted(p.name.removesuffix(".in.yaml") for p in GOLDEN.glob("*.in.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def golden_in(case: str) -> Path:
    return GOLDEN / f"{case}.in.yaml"


def golden_out(case: str) -> Path:
    return GOLDEN / f"{case}.out.yaml"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["inject", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pods_in(document: Any) -> list[dict[str, Any]]:
    """Every pod (template) of a document, as the injector sees them."""
    if not isinstance(document, dict):
        return []
    if document.get("kind") == "List":
        return [pod for item in document["items"] for pod in pods_in(item)]
    path = inject.POD_TEMPLATE_PATHS.get(document.get("kind", ""))
    if path is None:
        return []
    pod: Any = document
    for key in path:
        pod = pod[key]
    return [pod]


def host_paths(value: Any) -> list[Any]:
    """Every ``hostPath`` anywhere inside ``value``."""
    if isinstance(value, dict):
        found = [value["hostPath"]] if "hostPath" in value else []
        return found + [hp for v in value.values() for hp in host_paths(v)]
    if isinstance(value, list):
        return [hp for v in value for hp in host_paths(v)]
    return []


# ------------------------------------------------------------------------------------- golden


def test_there_are_golden_cases() -> None:
    assert {"pod-minimal", "pod-existing", "deployment", "workloads", "skipped"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_cli_output_matches_golden_file(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-f", str(golden_in(case)))
    assert code == 0, err
    if UPDATE:
        golden_out(case).write_text(out)
    assert out == golden_out(case).read_text()


@pytest.mark.parametrize("case", CASES)
def test_injection_is_idempotent(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Injecting the injected output changes nothing, byte for byte."""
    code, out, _ = run_cli(capsys, "-f", str(golden_out(case)))
    assert code == 0
    assert out == golden_out(case).read_text()
    for document in load_documents(golden_out(case).read_text()):
        namespace = document.get("metadata", {}).get("namespace")
        for pod in pods_in(document):
            assert isinstance(plan_injection(pod, namespace), Skip)


@pytest.mark.parametrize("case", CASES)
def test_never_adds_a_host_path(case: str) -> None:
    before = load_documents(golden_in(case).read_text())
    after = load_documents(golden_out(case).read_text())
    assert host_paths(after) == host_paths(before)
    for document in before:
        for pod in pods_in(document):
            plan = plan_injection(pod, "mcp-demo")
            if not isinstance(plan, Skip):
                assert host_paths([op["value"] for op in plan]) == []


@pytest.mark.parametrize("case", CASES)
def test_patch_applied_by_jsonpatch_gives_the_golden_pods(case: str) -> None:
    """The same operations the webhook sends, applied by an independent RFC 6902 library."""
    before = load_documents(golden_in(case).read_text())
    after = load_documents(golden_out(case).read_text())
    for document, expected in zip(before, after, strict=True):
        for pod, expected_pod in zip(pods_in(document), pods_in(expected), strict=True):
            namespace = document.get("metadata", {}).get("namespace")
            plan = plan_injection(pod, namespace)
            ops = [] if isinstance(plan, Skip) else plan
            patched = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(pod))
            assert patched == expected_pod
            assert apply_patch(pod, ops) == expected_pod


def test_golden_pod_minimal_is_what_we_expect() -> None:
    """Spot-check the golden output against the requirements (not only against itself)."""
    (pod,) = load_documents(golden_out("pod-minimal").read_text())
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"] == {INJECT_LABEL: "true"}
    status = json.loads(meta["annotations"][STATUS_ANNOTATION])
    assert status["container"] == "mcp-sidecar" and status["configMap"] == "mcp-sidecar"
    assert [c["name"] for c in spec["containers"]] == ["server"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "mcp-sidecar" and sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["run", "-c", "/etc/mcp-sidecar/sidecar.yaml"]
    assert {"name": "SPIFFE_ENDPOINT_SOCKET", "value": inject.WORKLOAD_API_SOCKET} in sidecar["env"]
    assert inject.WORKLOAD_API_SOCKET == "unix:///spiffe-workload-api/spire-agent.sock"
    assert sidecar["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": 15000,
        "scheme": "HTTP",
    }
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert set(sidecar["resources"]) == {"requests", "limits"}
    assert sidecar["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert all(mount["readOnly"] for mount in sidecar["volumeMounts"])
    assert spec["volumes"] == [
        {"name": "mcp-sidecar-workload-api", "csi": {"driver": "csi.spiffe.io", "readOnly": True}},
        {"name": "mcp-sidecar-config", "configMap": {"name": "mcp-sidecar"}},
    ]


def test_golden_pod_existing_keeps_what_was_there() -> None:
    (before,) = load_documents(golden_in("pod-existing").read_text())
    (after,) = load_documents(golden_out("pod-existing").read_text())
    assert after["metadata"]["labels"] == before["metadata"]["labels"]  # already "true"
    assert after["metadata"]["creationTimestamp"] == "2026-01-02T03:04:05Z"  # not a datetime
    annotations = after["metadata"]["annotations"]
    assert {k: annotations[k] for k in before["metadata"]["annotations"]} == before["metadata"][
        "annotations"
    ]
    assert json.loads(annotations[STATUS_ANNOTATION])["configMap"] == "agent-sidecar"
    names = [c["name"] for c in after["spec"]["initContainers"]]
    assert names == ["mcp-sidecar", "migrate"]  # the sidecar starts before other init containers
    assert after["spec"]["volumes"][:2] == before["spec"]["volumes"]
    assert after["spec"]["volumes"][3]["configMap"] == {"name": "agent-sidecar"}


def test_skipped_documents_are_unchanged_and_noted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-f", str(golden_in("skipped")))
    assert code == 0
    assert load_documents(out) == load_documents(golden_in("skipped").read_text())
    notes = err.strip().splitlines()
    assert len(notes) == 5
    assert "pod/host-networked: not injected: hostNetwork pod" in notes[0]
    assert "daemonset/node-thing: not injected: system namespace kube-system" in notes[1]
    assert "pod/opted-out: not injected: opted out" in notes[2]
    assert "pod/already: not injected: already injected" in notes[3]
    assert "pod/hand-made: not injected: already has a container named 'mcp-sidecar'" in notes[4]


# --------------------------------------------------------------------------- decisions, errors


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {}, "annotations": {}},
        "spec": {"containers": [{"name": "app", "image": "x"}], **spec},
    }


@pytest.mark.parametrize("namespace", sorted(inject.SYSTEM_NAMESPACES))
def test_system_namespaces_are_skipped_with_a_warning(namespace: str) -> None:
    decision = plan_injection(pod(), namespace)
    assert isinstance(decision, Skip) and decision.warn
    assert namespace in decision.reason


def test_host_network_is_skipped_with_a_warning() -> None:
    decision = plan_injection(pod(hostNetwork=True), "mcp-demo")
    assert isinstance(decision, Skip) and decision.warn and "hostNetwork" in decision.reason
    assert not isinstance(plan_injection(pod(hostNetwork=False), "mcp-demo"), Skip)


def test_opt_out_and_already_injected_are_skipped_quietly() -> None:
    opted_out = pod()
    opted_out["metadata"]["labels"][INJECT_LABEL] = "false"
    injected = pod()
    injected["metadata"]["annotations"][STATUS_ANNOTATION] = "{}"
    for candidate in (opted_out, injected):
        decision = plan_injection(candidate, "mcp-demo")
        assert isinstance(decision, Skip) and not decision.warn


def test_opt_out_wins_even_in_a_system_namespace_and_with_host_network() -> None:
    candidate = pod(hostNetwork=True)
    candidate["metadata"]["labels"][INJECT_LABEL] = "false"
    decision = plan_injection(candidate, "kube-system")
    assert isinstance(decision, Skip) and "opted out" in decision.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["spec"].update(volumes=[{"name": "mcp-sidecar-config"}]), "volume name"),
        (
            lambda p: p["spec"].update(volumes=[{"name": "mcp-sidecar-workload-api"}]),
            "volume name",
        ),
        (lambda p: p["metadata"]["labels"].update({INJECT_LABEL: "yes"}), '"true" or "false"'),
        (lambda p: p["metadata"]["labels"].update({INJECT_LABEL: True}), '"true" or "false"'),
        (
            lambda p: p["metadata"]["annotations"].update({CONFIG_MAP_ANNOTATION: "Bad_Name"}),
            "DNS-1123",
        ),
        (lambda p: p["metadata"]["annotations"].update({CONFIG_MAP_ANNOTATION: ""}), "DNS-1123"),
        (
            lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 15000}]),
            "container 'app' uses port 15000, the sidecar's admin port",
        ),
        (lambda p: p["spec"].update(containers=[]), "spec.containers is empty"),
        (lambda p: p["spec"].pop("containers"), "spec.containers is empty"),
        (lambda p: p.update(spec=[]), "spec must be a mapping"),
        (lambda p: p["spec"].update(volumes={}), "spec.volumes must be a list"),
        (lambda p: p["spec"].update(initContainers=["x"]), "spec.initContainers[0]"),
    ],
)
def test_unsafe_pods_are_refused(change: Any, message: str) -> None:
    candidate = pod()
    change(candidate)
    with pytest.raises(InjectionError, match=re.escape(message)):
        plan_injection(candidate, "mcp-demo")


def test_inputs_are_never_modified() -> None:
    candidate = pod(volumes=[{"name": "data", "emptyDir": {}}], initContainers=[])
    snapshot = copy.deepcopy(candidate)
    plan = plan_injection(candidate, "mcp-demo")
    assert not isinstance(plan, Skip)
    apply_patch(candidate, plan)
    inject_object(candidate)
    assert candidate == snapshot


def test_options_set_image_config_map_and_resources() -> None:
    options = InjectOptions(
        image="registry.example/mcp-sidecar@sha256:" + "a" * 64,
        config_map="policy",
        resources={"requests": {"cpu": "10m"}},
    )
    injected, results = inject_object(pod(), options)
    assert results == [("pod/p", None)]
    (sidecar,) = injected["spec"]["initContainers"]
    assert sidecar["image"] == options.image
    assert sidecar["resources"] == {"requests": {"cpu": "10m"}}
    assert injected["spec"]["volumes"][1]["configMap"] == {"name": "policy"}
    assert json.loads(injected["metadata"]["annotations"][STATUS_ANNOTATION])["image"] == (
        options.image
    )


def test_pod_without_metadata_gets_label_and_status() -> None:
    template = {"spec": {"containers": [{"name": "app", "image": "x"}]}}
    plan = plan_injection(template)
    assert not isinstance(plan, Skip)
    assert plan[0] == {
        "op": "add",
        "path": "/metadata",
        "value": {
            "labels": {INJECT_LABEL: "true"},
            "annotations": {STATUS_ANNOTATION: plan[0]["value"]["annotations"][STATUS_ANNOTATION]},
        },
    }
    assert jsonpatch.JsonPatch(plan).apply(template) == apply_patch(template, plan)


label_keys = st.text(alphabet="ab~/.-_", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(labels=st.dictionaries(label_keys, st.sampled_from(["x", "true"]), max_size=4))
def test_json_pointer_escaping_matches_jsonpatch(labels: dict[str, str]) -> None:
    """Label/annotation keys with ``~`` and ``/`` are escaped as RFC 6901 says."""
    labels.pop(INJECT_LABEL, None)
    candidate = pod()
    candidate["metadata"]["labels"] = dict(labels)
    candidate["metadata"]["annotations"] = {key: "v" for key in labels}
    plan = plan_injection(candidate, "mcp-demo")
    assert not isinstance(plan, Skip)
    by_library = jsonpatch.JsonPatch(plan).apply(copy.deepcopy(candidate))
    assert by_library == apply_patch(candidate, plan)
    assert by_library["metadata"]["labels"] == {**labels, INJECT_LABEL: "true"}


def test_apply_patch_rejects_what_injection_never_emits() -> None:
    with pytest.raises(ValueError, match="only 'add'"):
        apply_patch({}, [{"op": "remove", "path": "/a"}])
    with pytest.raises(IndexError):
        apply_patch({"a": []}, [{"op": "add", "path": "/a/2", "value": 1}])


# ----------------------------------------------------------------------------------------- CLI


def test_cli_reports_every_problem_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = pod(volumes=[{"name": "mcp-sidecar-config"}])
    also_bad = {**pod(), "metadata": {"name": "q", "labels": {INJECT_LABEL: "on"}}}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump_all([pod(), bad, also_bad]))
    code, out, err = run_cli(capsys, "-f", str(manifest))
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{manifest}: document 2: pod/p: volume name already used: mcp-sidecar-config",
        f'{manifest}: document 3: pod/q: label {INJECT_LABEL} must be "true" or "false", got "on"',
    ]


def test_cli_config_map_image_and_output_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.yaml"
    code, out, _ = run_cli(
        capsys,
        "-f",
        str(golden_in("pod-minimal")),
        "--config-map",
        "math-sidecar",
        "--image",
        "mcp-sidecar:1.2.3",
        "-o",
        str(target),
    )
    assert code == 0 and out == ""
    (injected,) = load_documents(target.read_text())
    assert injected["spec"]["volumes"][1]["configMap"]["name"] == "math-sidecar"
    assert injected["spec"]["initContainers"][0]["image"] == "mcp-sidecar:1.2.3"


def test_cli_invalid_yaml_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\n  spec: [\n")
    code, out, err = run_cli(capsys, "-f", str(broken))
    assert code == 1 and out == "" and "not valid YAML" in err
    code, out, err = run_cli(capsys, "-f", str(tmp_path / "missing.yaml"))
    assert code == 1 and out == "" and "missing.yaml" in err


def test_cli_refuses_a_manifest_with_a_duplicate_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Which of two ``hostNetwork`` (or two opt-out annotations) counts is not ours to guess:
    PyYAML would keep the last one silently, Kubernetes may read it otherwise."""
    manifest = tmp_path / "dup.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n"
        "  hostNetwork: true\n  containers: [{name: app, image: app}]\n  hostNetwork: false\n"
    )
    code, out, err = run_cli(capsys, "-f", str(manifest))
    assert (code, out) == (1, "")
    assert err == (
        f"{manifest}: not valid YAML: document 1.spec.hostNetwork: duplicate key (first at "
        "line 5, again at line 7); a security config must not be ambiguous\n"
    )


def test_inject_text_keeps_non_workloads_exactly() -> None:
    text = golden_in("workloads").read_text()
    output, notes = inject_text(text)
    assert notes == []
    before, after = load_documents(text), load_documents(output)
    assert after[0] == before[0]  # the Service
    assert after[2]["items"][1] == before[2]["items"][1]  # the ConfigMap inside the List


def test_entry_point_reads_stdin() -> None:
    """The installed command line, end to end: ``mcp-sidecar inject -f - < pod.yaml``."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "inject", "-f", "-"],
        input=golden_in("pod-minimal").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == golden_out("pod-minimal").read_text()
