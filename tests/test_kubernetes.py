"""The Kubernetes deployment (deploy/kubernetes), rendered and checked without a cluster.

No cluster, no kustomize binary and no network here, so the kustomizations are rendered
by a small renderer below that implements exactly the kustomize features the files use
(and refuses any other field, so a new feature cannot be silently ignored):
``resources`` (files and kustomization folders), ``patches`` (strategic merge, by file
or inline), ``namespace``, ``labels``, ``images`` and ``replicas``. ``kubectl kustomize
deploy/kubernetes/overlays/dev`` renders the same objects.

Each rendered object is validated against Kubernetes' own OpenAPI schemas (the
kubernetes-validate package ships them; strict: an unknown field fails) for the oldest
and the newest version supported, then held to what fedtier needs: every fedtier command
line parses with the real CLI parser after Kubernetes' $(VAR) expansion, every variable
is a fedtier setting, probes run ``fedtier health``, Services select pods that exist,
combiners advertise their headless DNS name, the data directory is on a volume, every
Secret and key read is one docs/deployment.md creates, and TLS certificates made the
documented way name what peers dial.
"""
from __future__ import annotations

import copy
import functools
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from fedtier.launch.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_env_example import variables_read_by_config  # noqa: E402  (the same list of settings)

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
DOCS = ROOT / "docs" / "deployment.md"
OVERLAYS = ["dev", "tls", "external"]
TLS_OVERLAYS = ["tls", "external"]
# where each overlay's combiner pods announce themselves: the headless Service's DNS name, or a public one
ADVERTISED = {"dev": "{pod}.combiner.{namespace}.svc.cluster.local",
              "tls": "{pod}.combiner.{namespace}.svc.cluster.local",
              "external": "{pod}.combiners.example.org"}
KUBERNETES_VERSIONS = ["1.30"]  # the oldest supported; the newest the package ships is added below
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
FEDTIER_IMAGE = "fedtier"


# ---------------------------------------------------------------- a minimal kustomize
class KustomizeError(ValueError):
    pass


# Strategic merge: lists of objects merge by these keys (their patchMergeKey in the
# Kubernetes API), and an element with ``$patch: delete`` removes its match; scalar lists
# (args, command) are replaced. A patch reaching another list of objects is refused
# rather than guessed.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images", "replicas"}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict) and isinstance(base, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and any(isinstance(x, dict) for x in patch):
        key = MERGE_KEYS.get(field)
        if key is None:
            raise KustomizeError(f"patching the list {field!r} of objects: this renderer merges only {MERGE_KEYS}")
        merged = [copy.deepcopy(x) for x in base or []]
        for item in patch:
            match = next((i for i, x in enumerate(merged) if x.get(key) == item[key]), None)
            if item.get("$patch") == "delete":  # the directive that removes one element
                if match is None:
                    raise KustomizeError(f"$patch: delete of {field} {item[key]!r}, which is not there")
                del merged[match]
            elif match is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[match] = strategic_merge(merged[match], item, field)
        return merged
    return copy.deepcopy(patch)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] in WORKLOADS:
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    return []


def containers_of(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in pod_specs(obj):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def image_name(image: str) -> tuple[str, str]:
    """``registry:5000/fedtier:1.0`` -> (``registry:5000/fedtier``, ``:1.0``); digests too."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    return (image[:colon], image[colon:]) if colon > slash else (image, "")


def render(folder: Path) -> list[dict[str, Any]]:
    """kustomize build FOLDER, for the features listed in the module docstring."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{folder}/kustomization.yaml: fields this renderer does not implement: {unknown}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        objects += render(path) if path.is_dir() else load_yaml_documents(path)
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) - {"path", "patch"}:
            raise KustomizeError(f"patch options not implemented: {set(patch_entry) - {'path', 'patch'}}")
        patches = load_yaml_documents(folder / patch_entry["path"]) if "path" in patch_entry \
            else [yaml.safe_load(patch_entry["patch"])]
        if len(patches) != 1:
            raise KustomizeError(f"{patch_entry}: one patch per entry (kustomize's patches field takes one)")
        for patch in patches:
            targets = [i for i, o in enumerate(objects) if o["kind"] == patch["kind"]
                       and o["metadata"]["name"] == patch["metadata"]["name"]]
            if len(targets) != 1:
                raise KustomizeError(f"patch for {patch['kind']}/{patch['metadata']['name']} matches "
                                     f"{len(targets)} objects, not one")
            objects[targets[0]] = strategic_merge(objects[targets[0]], patch)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        if label.get("includeSelectors"):
            raise KustomizeError("labels with includeSelectors are not implemented")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and obj["kind"] in WORKLOADS:
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for obj in objects:
            for container in containers_of(obj):
                name, tag = image_name(container["image"])
                if name == image["name"]:
                    tag = f":{image['newTag']}" if "newTag" in image else tag
                    tag = f"@{image['digest']}" if "digest" in image else tag
                    container["image"] = image.get("newName", name) + tag
    for replicas in spec.get("replicas", []):
        found = [o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == replicas["name"]]
        if not found:
            raise KustomizeError(f"replicas: no workload named {replicas['name']}")
        for obj in found:
            obj["spec"]["replicas"] = replicas["count"]
    return objects


@functools.lru_cache(maxsize=None)
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(KUBE / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(overlay)))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_renderer_merges_like_kustomize() -> None:
    base = {"spec": {"containers": [{"name": "a", "args": ["x", "y"], "env": [{"name": "A", "value": "1"}]},
                                    {"name": "b", "image": "i"}]}}
    patch = {"spec": {"containers": [{"name": "a", "args": ["z"], "env": [{"name": "B", "value": "2"},
                                                                        {"name": "A", "value": "3"}]}]}}
    merged = strategic_merge(base, patch)
    assert merged["spec"]["containers"][0] == {"name": "a", "args": ["z"], "env": [{"name": "A", "value": "3"},
                                                                                   {"name": "B", "value": "2"}]}
    assert merged["spec"]["containers"][1] == {"name": "b", "image": "i"}
    assert base["spec"]["containers"][0]["args"] == ["x", "y"]  # the base is not changed
    removed = strategic_merge(base, {"spec": {"containers": [{"name": "a", "env": [{"name": "A", "$patch": "delete"}]}]}})
    assert removed["spec"]["containers"][0]["env"] == []
    with pytest.raises(KustomizeError, match="ports"):
        strategic_merge({"ports": [{"port": 1}]}, {"ports": [{"port": 2}]}, "ports")
    assert image_name("registry:5000/fedtier:1.0") == ("registry:5000/fedtier", ":1.0")
    assert image_name("registry:5000/fedtier") == ("registry:5000/fedtier", "")


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)


# ---------------------------------------------------------------- Kubernetes' schemas
def kubernetes_versions() -> list[str]:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    return KUBERNETES_VERSIONS + [".".join(kubernetes_validate.latest_version().split(".")[:2])]


def schema_errors(obj: dict[str, Any], version: str) -> str | None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top)"
        return f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}"
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_kubernetes_schemas(overlay: str) -> None:
    objects = rendered(overlay)
    assert {o["kind"] for o in objects} >= {"Namespace", "Deployment", "StatefulSet", "Service",
                                           "PersistentVolumeClaim"}
    for version in kubernetes_versions():
        errors = [e for e in (schema_errors(o, version) for o in objects) if e]
        assert not errors, f"overlay {overlay}, Kubernetes {version}:\n" + "\n".join(errors)


def test_the_schema_check_catches_mistakes() -> None:
    """A typo'd field, a wrong type and a misplaced field would each fail the test above."""
    objects = rendered("dev")
    reducer = find(objects, "Deployment", "reducer")
    container = reducer["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["exec"]["comand"] = container["livenessProbe"]["exec"].pop("command")
    assert "'comand' was unexpected" in schema_errors(reducer, "1.30")
    combiner = find(objects, "StatefulSet", "combiner")
    combiner["spec"]["replicas"] = "2"
    assert "is not of type 'integer'" in schema_errors(combiner, "1.30")
    service = find(objects, "Service", "combiner")
    service["spec"]["template"] = {}
    assert "'template' was unexpected" in schema_errors(service, "1.30")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_the_overlays_namespace_and_no_secret_is_committed(overlay: str) -> None:
    objects = rendered(overlay)
    [namespace] = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fedtier"
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are made with kubectl, never kept in git"
    for path in KUBE.rglob("*.yaml"):
        assert "BEGIN" not in path.read_text(encoding="utf-8"), f"{path} holds a PEM block"


# ---------------------------------------------------------------- containers as Kubernetes runs them
def namespace_of(objects: list[dict[str, Any]]) -> str:
    return next(o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"])


def pod_name(obj: dict[str, Any], ordinal: int = 0) -> str:
    return f"{obj['metadata']['name']}-{ordinal}" if obj["kind"] == "StatefulSet" \
        else f"{obj['metadata']['name']}-7c9d8b6f5-x2k4z"


def environment(container: dict[str, Any], pod: str, namespace: str) -> dict[str, str]:
    """The container's variables with literal values, the downward API's resolved, and
    secret references as placeholders."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[var["name"]] = {"metadata.name": pod, "metadata.namespace": namespace}[
                    source["fieldRef"]["fieldPath"]]
            else:
                env[var["name"]] = f"<secret {source['secretKeyRef']['name']}/{source['secretKeyRef']['key']}>"
    return env


REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes; unknown stays)."""
    return REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def shell_fedtier_argv(script: str, env: dict[str, str]) -> list[str] | None:
    """The fedtier command line a `sh -c` probe runs, with the shell's "$VAR" expanded."""
    argv = shlex.split(re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env[m[1]], script))
    if argv[:1] == ["exec"]:
        argv = argv[1:]
    return argv if argv[:1] == ["fedtier"] else None


def fedtier_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        for container in containers_of(obj):
            if image_name(container["image"])[0].split("/")[-1] == FEDTIER_IMAGE:
                yield obj, container


def command_lines(obj: dict[str, Any], container: dict[str, Any], namespace: str) -> dict[str, list[str]]:
    """Every fedtier command line the container runs, by where it is: main, each probe."""
    env = environment(container, pod_name(obj), namespace)
    found: dict[str, list[str]] = {}
    if "command" not in container:  # the image's ENTRYPOINT is fedtier
        found["main"] = ["fedtier"] + [expand(a, env) for a in container["args"]]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            continue
        command = container[probe]["exec"]["command"]  # no $(VAR) expansion in probes
        assert "$(" not in " ".join(command), f"{container['name']} {probe}: probes do not expand $(VAR)"
        argv = shell_fedtier_argv(command[2], env) if command[:2] == ["sh", "-c"] else command
        assert argv and argv[0] == "fedtier", f"{container['name']} {probe} does not run fedtier: {command}"
        found[probe] = argv
    return found


def parse(argv: list[str], where: str) -> Any:
    assert argv[0] == "fedtier"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse (exit {exc.code}; see stderr above)")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_fedtier_command_line_parses(overlay: str) -> None:
    objects = rendered(overlay)
    namespace = namespace_of(objects)
    seen = set()
    for obj, container in fedtier_containers(objects):
        for where, argv in command_lines(obj, container, namespace).items():
            assert not any("$(" in a for a in argv), f"{container['name']}: unexpanded variable in {argv}"
            args = parse(argv, f"{overlay}: {obj['metadata']['name']}/{container['name']} {where}")
            seen.add((args.command, where))
    assert {("reducer", "main"), ("combiner", "main"), ("client", "main"), ("health", "readinessProbe"),
            ("health", "livenessProbe")} <= seen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_a_fedtier_setting_or_feeds_an_expansion(overlay: str) -> None:
    """A misspelt variable would be silently ignored by fedtier: each one set must be read."""
    settings = variables_read_by_config()
    assert {"FEDTIER_DATA_DIR", "FEDTIER_CREDENTIALS_DIR", "FEDTIER_TLS_CA"} <= settings  # the scan works
    for obj, container in fedtier_containers(rendered(overlay)):
        text = " ".join(container.get("command", []) + container.get("args", []) +
                        [" ".join(container[p]["exec"]["command"]) for p in
                         ("startupProbe", "readinessProbe", "livenessProbe") if p in container])
        for var in container.get("env", []):
            name = var["name"]
            used = name in settings or f"$({name})" in text or re.search(rf"\${{?{name}\b", text)
            assert used, f"{obj['metadata']['name']}/{container['name']}: {name} is neither a fedtier setting " \
                         f"(fedtier/config.py) nor used in the command line"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_paths_in_settings_are_on_mounted_volumes(overlay: str) -> None:
    """FEDTIER_DATA_DIR on its volume, key, credential and certificate paths inside a mounted Secret."""
    for obj, container in fedtier_containers(rendered(overlay)):
        spec = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        env = environment(container, pod_name(obj), "ns")
        for name, value in env.items():
            if not value.startswith("/"):
                continue
            [(mount, volume)] = [(m, v) for m, v in mounts.items() if value == m or value.startswith(m + "/")]
            if name == "FEDTIER_DATA_DIR":
                assert value == mount and "secret" not in volume
                assert not [m for m in container["volumeMounts"] if m["mountPath"] == mount and m.get("readOnly")]
            elif "secret" in volume:
                assert Path(value).parent == Path(mount), f"{name}={value}: not a key of {mount}"
            else:
                assert name == "FEDTIER_CREDENTIALS_DIR" and volume.get("emptyDir", {}).get("medium") == "Memory"


def test_the_reducer_keeps_its_data_on_a_persistent_volume() -> None:
    objects = rendered("dev")
    reducer = find(objects, "Deployment", "reducer")
    assert reducer["spec"]["replicas"] == 1 and reducer["spec"]["strategy"] == {"type": "Recreate"}
    spec = reducer["spec"]["template"]["spec"]
    [container] = spec["containers"]
    data_dir = environment(container, "reducer", "ns")["FEDTIER_DATA_DIR"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert f"FEDTIER_DATA_DIR={data_dir}" in (ROOT / "Dockerfile").read_text(), \
        "the image's data directory (owned by its user) and the mount must agree"


# ---------------------------------------------------------------- probes, services, names
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_run_fedtier_health_against_the_containers_own_port(overlay: str) -> None:
    objects = rendered(overlay)
    namespace = namespace_of(objects)
    for name, kind in (("reducer", "Deployment"), ("combiner", "StatefulSet")):
        obj = find(objects, kind, name)
        [container] = obj["spec"]["template"]["spec"]["containers"]
        env = environment(container, pod_name(obj), namespace)
        lines = command_lines(obj, container, namespace)
        main_args = parse(lines.pop("main"), name)
        assert {"readinessProbe", "livenessProbe"} <= set(lines)
        [port] = [p["containerPort"] for p in container["ports"]]
        assert main_args.port == port
        for probe, argv in lines.items():
            args = parse(argv, f"{name} {probe}")
            assert args.command == "health"
            if name == "reducer":
                scheme = "https" if env.get("FEDTIER_TLS_CERT") else "http"
                assert args.http == f"{scheme}://localhost:{port}/api/v1/status", probe
            else:
                assert args.grpc == f"localhost:{port}" and args.as_name == main_args.name == pod_name(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_that_exist_on_ports_they_open(overlay: str) -> None:
    objects = rendered(overlay)
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = dict(service["spec"]["selector"])
        pod = selector.pop("statefulset.kubernetes.io/pod-name", None)  # the controller's label of one pod
        [workload] = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        if pod is not None:
            assert workload["kind"] == "StatefulSet" and pod in \
                [pod_name(workload, k) for k in range(workload["spec"]["replicas"])], f"no pod {pod}"
        assert selector.items() <= workload["spec"]["selector"]["matchLabels"].items()
        ports = {p["name"]: p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"].get("ports", []):
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']}: no port {port['targetPort']}"
    for workload in workloads:
        if workload["kind"] == "StatefulSet":
            governing = find(objects, "Service", workload["spec"]["serviceName"])
            assert governing["spec"]["selector"].items() <= workload["spec"]["selector"]["matchLabels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_reducer_reaches_the_stores_and_nothing_reaches_a_client(overlay: str) -> None:
    objects = rendered(overlay)
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"] for o in objects
            if o["kind"] in WORKLOADS}

    def selected(selector: dict[str, Any]) -> set[str]:
        chosen = {name for name, labels in pods.items() if selector["matchLabels"].items() <= labels.items()}
        assert chosen, f"the selector {selector} matches no pod"
        return chosen

    admitted: dict[str, set[str]] = {}
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for target in selected(policy["spec"]["podSelector"]):
            admitted[target] = {src for rule in policy["spec"].get("ingress", []) for peer in rule["from"]
                                for src in selected(peer["podSelector"])}
    assert admitted == {"mongo": {"reducer"}, "minio": {"reducer"}, "client": set()}
    reducer = find(objects, "Deployment", "reducer")["spec"]["template"]["spec"]["containers"][0]
    store_ports = {p["containerPort"] for o in objects if o["metadata"]["name"] in ("mongo", "minio")
                   and o["kind"] == "StatefulSet" for p in o["spec"]["template"]["spec"]["containers"][0]["ports"]}
    env = environment(reducer, "reducer", "ns")
    assert {int(env["FEDN_MONGO_PORT"]), int(env["FEDN_MINIO_PORT"])} <= store_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_combiner_advertises_its_own_headless_dns_name(overlay: str) -> None:
    objects = rendered(overlay)
    namespace = namespace_of(objects)
    combiners = find(objects, "StatefulSet", "combiner")
    service = find(objects, "Service", combiners["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["name"] == "combiner"  # ADVERTISED names it
    [container] = combiners["spec"]["template"]["spec"]["containers"]
    for ordinal in range(combiners["spec"]["replicas"]):
        pod = pod_name(combiners, ordinal)
        env = environment(container, pod, namespace)
        args = parse(["fedtier"] + [expand(a, env) for a in container["args"]], pod)
        assert args.name == pod
        assert args.advertise_host == ADVERTISED[overlay].format(pod=pod, namespace=namespace)
        if overlay == "external":  # its public name leads to a Service of that pod alone, on the same port
            [public] = [s for s in objects if s["kind"] == "Service" and s["spec"].get("type") == "LoadBalancer"
                        and s["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") == pod]
            assert [p["port"] for p in public["spec"]["ports"]] == [args.port]
        assert args.port == service["spec"]["ports"][0]["port"]
        reducer = find(objects, "Service", "reducer")
        assert args.reducer.rsplit(":", 1) == [f"{'https' if 'FEDTIER_TLS_CERT' in env else 'http'}://"
                                               f"{reducer['metadata']['name']}", str(reducer["spec"]["ports"][0]["port"])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_client_pods_name_themselves_after_their_pod_and_split_the_data_by_replicas(overlay: str) -> None:
    from fedtier.replica import kubernetes_replica, resolve_client_identity

    objects = rendered(overlay)
    clients = find(objects, "StatefulSet", "client")
    [container] = clients["spec"]["template"]["spec"]["containers"]
    replicas = clients["spec"]["replicas"]
    names = set()
    for ordinal in range(replicas):
        pod = pod_name(clients, ordinal)
        env = environment(container, pod, "ns")
        args = parse(["fedtier"] + [expand(a, env) for a in container["args"]], pod)
        name, index, count = resolve_client_identity(args.name, args.partition, env["CLIENT_NAME_BASE"],
                                                     lambda: kubernetes_replica(pod))
        assert (name, index, count) == (pod, ordinal, replicas), "FEDTIER_CLIENTS must equal the replicas"
        names.add(name)
    assert len(names) == replicas
    if overlay == "dev":
        assert (replicas, find(objects, "StatefulSet", "combiner")["spec"]["replicas"]) == (5, 2)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_with_resource_bounds(overlay: str) -> None:
    for obj in rendered(overlay):
        for spec in pod_specs(obj):
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["automountServiceAccountToken"] is False
            for container in spec.get("initContainers", []) + spec["containers"]:
                where = f"{obj['metadata']['name']}/{container['name']}"
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            for volume in spec.get("volumes", []):
                if "emptyDir" in volume:
                    assert "sizeLimit" in volume["emptyDir"], f"{obj['metadata']['name']}: unbounded emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_participant_sees_only_its_own_credential_and_only_the_reducer_the_signing_key(overlay: str) -> None:
    for obj in rendered(overlay):
        for spec in pod_specs(obj):
            secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
            for container in spec["containers"]:
                mounted = {secrets[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in secrets}
                assert not {"fedtier-combiner-credentials", "fedtier-client-credentials"} & mounted, \
                    f"{obj['metadata']['name']} would see every participant's credential"
                assert ("fedtier-signing-key" in mounted) == (obj["metadata"]["name"] == "reducer")
                if obj["metadata"]["name"] == "client":
                    assert mounted <= {"fedtier-tls-ca"}


# ---------------------------------------------------------------- docs/deployment.md
def docs_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def fedtier_argv(argv: list[str]) -> list[str] | None:
    """``fedtier ...`` (or ``.venv/bin/fedtier ...``) as ["fedtier", ...]; None for other commands."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value fedtier ...
        argv = argv[1:]
    if argv and (argv[0] == "fedtier" or argv[0].endswith("/fedtier")):
        return ["fedtier"] + argv[1:]
    return None


def docs_commands() -> list[list[str]]:
    """Each shell command of the docs' bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in docs_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def created_secrets() -> dict[str, set[str]]:
    """Secret name -> the keys the docs' `kubectl create secret` commands put in it."""
    issued_into: dict[str, set[str]] = {}  # folder -> NAME.token files `fedtier token issue --out` writes
    for argv in docs_commands():
        line = fedtier_argv(argv)
        if line and line[1:3] == ["token", "issue"]:
            args = build_parser().parse_args(line[1:])
            issued_into.setdefault(args.out.rstrip("/"), set()).update(f"{n}.token" for n in args.name)
    secrets: dict[str, set[str]] = {}
    for argv in docs_commands():
        if argv[:3] != ["kubectl", "create", "secret"]:
            continue
        kind, name, rest = argv[3], argv[4], argv[5:]
        keys = secrets.setdefault(name, set())
        if kind == "tls":
            keys |= {"tls.crt", "tls.key"}
        for arg in rest:
            if arg.startswith("--from-literal="):
                keys.add(arg.split("=", 2)[1])
            elif arg.startswith("--from-file="):
                source = arg.split("=", 1)[1]
                if "=" in source:
                    keys.add(source.split("=", 1)[0])
                elif source.rstrip("/") in issued_into:
                    keys |= issued_into[source.rstrip("/")]
                else:
                    keys.add(Path(source).name)
    return secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_and_key_read_is_created_by_the_docs(overlay: str) -> None:
    objects = rendered(overlay)
    secrets = created_secrets()
    assert "fedtier-admin" in secrets  # the scan works
    for obj in objects:
        for spec in pod_specs(obj):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            volumes.update({t["metadata"]["name"]: {"persistentVolumeClaim": {}}
                            for t in obj["spec"].get("volumeClaimTemplates", [])})
            for container in spec.get("initContainers", []) + spec["containers"]:
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secrets.get(ref["name"], set()), \
                            f"{obj['metadata']['name']}: {var['name']} reads {ref['name']}/{ref['key']}, which " \
                            f"docs/deployment.md does not create"
                env = environment(container, pod_name(obj), "ns")
                for mount in container.get("volumeMounts", []):
                    volume = volumes[mount["name"]]
                    if "secret" not in volume:
                        continue
                    name = volume["secret"]["secretName"]
                    assert name in secrets, f"{obj['metadata']['name']} mounts Secret {name}, never created"
                    for value in env.values():
                        if value.startswith(mount["mountPath"] + "/"):
                            assert Path(value).name in secrets[name], f"{value}: no such key in {name}"
    for kind, secret in (("combiner", "fedtier-combiner-credentials"), ("client", "fedtier-client-credentials")):
        replicas = find(objects, "StatefulSet", kind)["spec"]["replicas"]
        assert {f"{kind}-{k}.token" for k in range(replicas)} <= secrets[secret], \
            f"the docs must issue a credential for every {kind} pod"


def test_docs_commands_are_real() -> None:
    commands = docs_commands()
    fedtier_lines = [line for line in map(fedtier_argv, commands) if line]
    assert len(fedtier_lines) >= 6
    for line in fedtier_lines:
        parse(line, "docs/deployment.md")
    applied = [argv[argv.index("-k") + 1] for argv in commands if argv[:2] == ["kubectl", "apply"] and "-k" in argv]
    assert {f"deploy/kubernetes/overlays/{o}" for o in OVERLAYS} <= set(applied)
    for path in applied:
        assert (ROOT / path / "kustomization.yaml").is_file(), path
    for argv in commands:
        if argv[:2] == ["make", "demo"]:
            assert "demo:" in (ROOT / "Makefile").read_text()
        if argv[:2] == ["kubectl", "scale"]:
            kind, name = argv[2].split("/")
            assert kind == "statefulset" and name in ("combiner", "client")


def test_docs_manifests_validate() -> None:
    """The Services the docs show for clients outside the cluster are valid objects too."""
    documents = [d for block in docs_blocks("yaml") for d in yaml.safe_load_all(block) if d and "kind" in d]
    assert documents
    for version in kubernetes_versions():
        errors = [e for e in (schema_errors(d, version) for d in documents) if e]
        assert not errors, "\n".join(errors)
    combiners = find(rendered("dev"), "StatefulSet", "combiner")
    for doc in documents:
        for spec in pod_specs(doc):  # the namespace enforces the restricted Pod Security Standard
            assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]
            for container in spec["containers"]:
                assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}
        if doc["kind"] == "Service":
            pod = doc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]
            assert re.fullmatch(rf"{combiners['metadata']['name']}-\d+", pod)
            assert doc["spec"]["ports"][0]["targetPort"] == "grpc"


# ---------------------------------------------------------------- TLS, made the documented way
def matches(pattern: str, host: str) -> bool:
    """RFC 6125: a wildcard stands for exactly the leftmost label."""
    if pattern.startswith("*."):
        return host.split(".", 1)[-1] == pattern[2:] and "." in host
    return pattern == host


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_tls_certificates_made_as_documented_name_what_peers_dial(overlay: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography import x509

    [certs] = [line for line in map(fedtier_argv, docs_commands())
               if line and line[1:2] == ["certs"] and "k8s/certs" in line]
    monkeypatch.chdir(tmp_path)
    assert main(["--env-file", "/dev/null"] + certs[1:]) == 0
    secrets = {argv[4]: argv for argv in docs_commands() if argv[:4] == ["kubectl", "create", "secret", "tls"]}

    def names(secret: str) -> set[str]:
        cert_file = next(a.split("=", 1)[1] for a in secrets[secret] if a.startswith("--cert="))
        cert = x509.load_pem_x509_certificate((tmp_path / cert_file).read_bytes())
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                   .get_values_for_type(x509.DNSName))

    objects = rendered(overlay)
    namespace = namespace_of(objects)
    dialed: dict[str, set[str]] = {"fedtier-tls-reducer": {"localhost"}, "fedtier-tls-combiner": {"localhost"}}
    for obj, container in fedtier_containers(objects):
        if "args" not in container:
            continue
        for ordinal in range(obj["spec"].get("replicas", 1)):
            env = environment(container, pod_name(obj, ordinal), namespace)
            parsed = parse(["fedtier"] + [expand(a, env) for a in container["args"]], obj["metadata"]["name"])
            if getattr(parsed, "reducer", ""):
                assert parsed.reducer.startswith("https://")
                dialed["fedtier-tls-reducer"].add(parsed.reducer.split("://")[1].split(":")[0])
            if parsed.command == "combiner":
                dialed["fedtier-tls-combiner"].add(parsed.advertise_host)
    assert len(dialed["fedtier-tls-combiner"]) == 3  # localhost and both combiners
    for secret, hosts in dialed.items():
        sans = names(secret)
        for host in hosts:
            assert any(matches(san, host) for san in sans), f"{secret} does not name {host} (it names {sans})"
    assert not any("ca-key.pem" in " ".join(argv) for argv in docs_commands() if argv[:2] == ["kubectl", "create"])


def test_docs_variables_and_compose_file_for_a_combiner_host() -> None:
    """The variables set before a fedtier command are settings; the combiner host's compose
    file is valid compose, its command parses, and its name, certificate and healthcheck agree."""
    settings = variables_read_by_config()
    for argv in docs_commands():
        if fedtier_argv(argv):
            for assignment in argv[:argv.index(next(a for a in argv if "=" not in a))]:
                assert assignment.split("=")[0] in settings, assignment
    [compose] = [yaml.safe_load(b) for b in docs_blocks("yaml") if "services:" in b]
    schema = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
    if schema.is_file():
        import json

        from jsonschema import Draft7Validator

        errors = list(Draft7Validator(json.loads(schema.read_text(encoding="utf-8"))).iter_errors(compose))
        assert not errors, [e.message for e in errors]
    [service] = compose["services"].values()
    args = parse(["fedtier"] + service["command"], "combiner host")
    assert service["ports"] == [f"{args.port}:{args.port}"]
    health = parse(["fedtier"] + service["healthcheck"]["test"][2:], "combiner host healthcheck")
    assert (health.grpc, health.as_name) == (f"localhost:{args.port}", args.name)
    assert set(service["environment"]) <= settings
    assert service["environment"]["FEDTIER_TLS_CERT"].endswith(f"/{args.name}.pem")
    [certs] = [line for line in map(fedtier_argv, docs_commands())
               if line and line[1:2] == ["certs"] and "k8s/certs" not in line]
    assert any(a.startswith(f"{args.name}={args.advertise_host},") for a in certs)


def test_the_wildcard_combiner_certificate_works_for_grpc(tmp_path: Path) -> None:
    """gRPC's own hostname check accepts the documented wildcard for each pod's name, and
    only for names one label below it: a live combiner serving that certificate."""
    import grpc

    from fedtier.launch.certs import ServerSpec, ensure_ca, issue_server_cert
    from fedtier.combiner.server import CombinerServer, CombinerSettings
    from fedtier.proto import fedtier_pb2 as pb
    from fedtier.proto import fedtier_pb2_grpc as rpc

    [certs] = [line for line in map(fedtier_argv, docs_commands())
               if line and line[1:2] == ["certs"] and "k8s/certs" in line]
    [spec] = [certs[i + 1] for i, a in enumerate(certs) if a == "--server" and certs[i + 1].startswith("combiner=")]
    ensure_ca(tmp_path)
    cert, key = issue_server_cert(tmp_path, ServerSpec.parse(spec))
    server = CombinerServer(CombinerSettings(name="combiner-1", host="127.0.0.1", port=0, work_dir=tmp_path / "w",
                                             tls_cert=str(cert), tls_key=str(key)))
    port = server.start()
    try:
        def status(name: str) -> bool:
            credentials = grpc.ssl_channel_credentials((tmp_path / "ca.pem").read_bytes())
            # the test dials 127.0.0.1 but checks the certificate as if it had dialled `name`
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                                     options=[("grpc.ssl_target_name_override", name)]) as channel:
                try:
                    return rpc.ControlStub(channel).Status(pb.StatusRequest(), timeout=5).name == "combiner-1"
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    return False

        objects = rendered("tls")
        combiners = find(objects, "StatefulSet", "combiner")
        for ordinal in range(combiners["spec"]["replicas"] + 3):  # scaled up, too, without a new certificate
            assert status(ADVERTISED["tls"].format(pod=f"combiner-{ordinal}", namespace=namespace_of(objects)))
        assert status(ADVERTISED["external"].format(pod="combiner-7", namespace=""))
        assert status("localhost")  # the probes
        assert not status("x.combiner-1.combiner.fedtier.svc.cluster.local")  # one label only
        assert not status("combiner-1.combiner.other.svc.cluster.local")  # another namespace
    finally:
        server.stop(0)
