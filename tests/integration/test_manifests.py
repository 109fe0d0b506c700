"""The OpenShift template and the kustomize base: processed as `oc process` and `kubectl
kustomize` would, then validated offline against the Kubernetes schemas (kubernetes-validate)
and against what the product itself accepts (`haproxy-egress check` on the rendered env)."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = ROOT / "image" / "openshift-template.yaml"
KUSTOMIZE_BASE = ROOT / "image" / "kubernetes"
SERVICE_MONITOR_COMPONENT = KUSTOMIZE_BASE / "servicemonitor"

# OpenShift 4.12 (the oldest schema kubernetes-validate ships), 4.16 (an EUS release), and the
# newest Kubernetes it knows.
K8S_VERSIONS = ("1.25.0", "1.29.0", kubernetes_validate.latest_version())

# The seed blog's example, plus the image (no public registry hosts it).
SEED_PARAMS = {
    "PROXY_SERVICE": "test-scraper",
    "SERVICE_NAME": "tst-scr-svc",
    "SERVICE_TCP_PORT": "8443",
    "SERVICE_DEST_PORT": "443",
    "SERVICE_DEST": "www.google.com",
    "IMAGE": "image-registry.openshift-image-registry.svc:5000/egress/haproxy-egress:0.1.0",
}


# --- a faithful `oc process` -----------------------------------------------------------------
# Mirrors openshift/library-go pkg/template/templateprocessing (Process, substitution) and
# pkg/template/generator (the "expression" generator), quirks included, so that what passes
# here is what `oc process -f image/openshift-template.yaml -p ...` produces.

STRING_PARAM = re.compile(r"\$\{([a-zA-Z0-9_]+?)\}")
NON_STRING_PARAM = re.compile(r"^\$\{\{([a-zA-Z0-9_]+)\}\}$")

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NUMERALS = "0123456789"
SYMBOLS = "~!@#$%^&*()-_+={}[]\\|<,>.?/\"';:`"
ASCII = ALPHABET + NUMERALS + SYMBOLS
RANGE_EXP = re.compile(r"([\\]?[a-zA-Z0-9]\-?[a-zA-Z0-9]?)")
GENERATORS_EXP = re.compile(r"\[([a-zA-Z0-9\-\\]+)\](\{([0-9]+)\})")
EXPRESSION_EXP = re.compile(r"\[(\\w|\\d|\\a|\\A)|([a-zA-Z0-9]\-[a-zA-Z0-9])+\]")


class TemplateError(Exception):
    """What `oc process` reports as an error instead of producing objects."""


def _alphabet_slice(start: str, end: str) -> str:
    left, right = ASCII.find(start), ASCII.rfind(end)
    if left > right:
        raise TemplateError(f"invalid range specified: {start}-{end}")
    return ASCII[left:right]  # sic: the upstream slice leaves out the range's last character


def generate_expression(expression: str, rng: random.Random) -> str:
    """The "expression" generator: each `[ranges]{n}` becomes n random characters."""
    while (match := GENERATORS_EXP.search(expression)) is not None:
        whole = match.group(0)
        expr = whole[: whole.rfind("{")]
        if not EXPRESSION_EXP.search(expr):
            raise TemplateError(f"malformed expresion syntax: {expr}")
        length = int(whole[whole.rfind("{") + 1 : -1])
        if not 0 < length <= 255:
            raise TemplateError(f"range must be within [1-255] characters ({length})")
        alphabet = ""
        for m in RANGE_EXP.finditer(expr):
            pair = m.group(0)[0] + m.group(0)[-1]
            alphabet += {
                "\\w": ALPHABET + NUMERALS + "_",
                "\\d": NUMERALS,
                "\\a": ALPHABET + NUMERALS,
                "\\A": SYMBOLS,
            }.get(pair) or _alphabet_slice(pair[0], pair[1])
        alphabet = "".join(dict.fromkeys(alphabet))
        value = "".join(rng.choice(alphabet) for _ in range(length))
        expression = expression.replace(whole, value, 1)
    return expression


def _substitute(params: Mapping[str, str], text: str) -> tuple[str, bool]:
    """EvaluateParameterSubstitution: (result, stays a string?)."""
    exact = NON_STRING_PARAM.match(text)
    if exact and exact.group(1) in params:
        return params[exact.group(1)], False
    out = text
    for match in STRING_PARAM.finditer(text):
        if match.group(1) in params:
            out = out.replace(match.group(0), params[match.group(1)], 1)
    return out, True


def _visit(params: Mapping[str, str], value: Any) -> Any:
    """Substitute in every string of an object, map keys included; `${{X}}` values become
    JSON when they parse as JSON and stay strings otherwise."""
    if isinstance(value, dict):
        return {_substitute(params, k)[0]: _visit(params, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_visit(params, v) for v in value]
    if isinstance(value, str):
        out, as_string = _substitute(params, value)
        if as_string:
            return out
        try:
            return json.loads(out)
        except ValueError:
            return out
    return value


def oc_process(
    template: Mapping[str, Any], values: Mapping[str, str], seed: int = 0
) -> dict[str, Any]:
    """`oc process -f TEMPLATE -p K=V ...`: the resulting `kind: List`, or TemplateError."""
    template = copy.deepcopy(dict(template))
    declared = {p["name"]: p for p in template.get("parameters", [])}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise TemplateError(f"unknown parameter name {unknown[0]!r}")
    rng = random.Random(seed)
    problems = []
    params: dict[str, str] = {}
    for i, param in enumerate(template.get("parameters", [])):
        value = str(values.get(param["name"], param.get("value") or ""))
        if not value and param.get("generate"):
            if param["generate"] != "expression":
                raise TemplateError(f"Unknown generator name {param['generate']!r}")
            value = generate_expression(str(param.get("from", "")), rng)
        if not value and param.get("required"):
            problems.append(
                f"template.parameters[{i}]: parameter {param['name']} is required "
                "and must be specified"
            )
        params[param["name"]] = value
    if problems:
        raise TemplateError("; ".join(problems))
    labels = {
        _substitute(params, k)[0]: _substitute(params, v)[0]
        for k, v in (template.get("labels") or {}).items()
    }
    items = []
    for raw in template.get("objects", []):
        meta = raw.get("metadata") or {}
        # A literal namespace is dropped: objects land in the project they are created in.
        if meta.get("namespace") and not STRING_PARAM.search(str(meta["namespace"])):
            meta["namespace"] = ""
        obj = _visit(params, raw)
        if labels:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        items.append(obj)
    return {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}


# --- a small `kubectl kustomize` ---------------------------------------------------------------
# Only the rules the base uses (resources, components, images, namespace); any other field in
# a kustomization is refused, so this cannot silently diverge from the real kustomize.

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "components", "images", "namespace"}


def _split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' → ('repo/name', ':tag'); digests ('@sha256:…') are kept as the suffix."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_images(obj: dict[str, Any], rules: list[dict[str, str]]) -> None:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        name, suffix = _split_image(container["image"])
        for rule in rules:
            if rule["name"] != name:
                continue
            if "digest" in rule:
                suffix = "@" + rule["digest"]
            elif "newTag" in rule:
                suffix = ":" + str(rule["newTag"])
            container["image"] = rule.get("newName", name) + suffix


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` prints, for the rules listed above."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    extra = set(spec) - KUSTOMIZE_FIELDS
    assert not extra, f"{directory}: kustomization uses {extra}, which this test does not model"
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += kustomize(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for entry in spec.get("components", []):
        objects += kustomize(directory / entry)
    for obj in objects:
        _set_images(obj, spec.get("images", []))
        if spec.get("namespace"):
            obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    """What the real `kubectl kustomize` renders (kustomize v5 inside kubectl)."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects keyed by (kind, name), the identity kubectl and oc use."""
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(keyed) == len(objects), "two objects share a kind and a name"
    return keyed


# --- schemas for the OpenShift and prometheus-operator kinds kubernetes-validate lacks --------
# Written from the route.openshift.io/v1, template.openshift.io/v1 and monitoring.coreos.com/v1
# API definitions: the fields these manifests use, their types, and what the API requires.


def closed_object(properties: dict[str, Any], *required: str, **more: Any) -> dict[str, Any]:
    """An object schema with these properties and no others, `required` among them."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, **more}
    if required:
        schema["required"] = list(required)
    schema["properties"] = properties
    return schema


def kind_schema(api_version: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A whole object of one kind: its apiVersion, kind, metadata and spec, all required."""
    return closed_object(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": name},
            "metadata": META,
            "spec": spec,
        },
        "apiVersion",
        "kind",
        "metadata",
        "spec",
    )


DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "namespace": {"type": "string"},
    },
}
INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
ROUTE_SCHEMA = kind_schema(
    "route.openshift.io/v1",
    "Route",
    closed_object(
        {
            "host": {"type": "string"},
            "path": {"type": "string"},
            "to": closed_object(
                {
                    "kind": {"const": "Service"},
                    "name": {"type": "string", "pattern": DNS_LABEL},
                    "weight": {"type": "integer", "minimum": 0, "maximum": 256},
                },
                "kind",
                "name",
            ),
            "port": closed_object({"targetPort": INT_OR_STRING}, "targetPort"),
            "tls": closed_object(
                {
                    "termination": {"enum": ["edge", "passthrough", "reencrypt"]},
                    "insecureEdgeTerminationPolicy": {"enum": ["Allow", "None", "Redirect"]},
                    "certificate": {"type": "string"},
                    "key": {"type": "string"},
                    "caCertificate": {"type": "string"},
                },
                "termination",
            ),
            "wildcardPolicy": {"enum": ["None", "Subdomain"]},
        },
        "to",
    ),
)
# monitoring.coreos.com/v1 SecretKeySelector, ConfigMapKeySelector, SecretOrConfigMap and
# TLSConfig (the endpoint's tlsConfig): what the operator reads from each.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_SELECTOR = closed_object(
    {
        "name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
        "key": {"type": "string", "pattern": r"^[-._a-zA-Z0-9]+$"},
        "optional": {"type": "boolean"},
    },
    "key",
)
SECRET_OR_CONFIG_MAP = closed_object(
    {"secret": SECRET_KEY_SELECTOR, "configMap": SECRET_KEY_SELECTOR},
    minProperties=1,
    maxProperties=1,
)
TLS_CONFIG = closed_object(
    {
        "ca": SECRET_OR_CONFIG_MAP,
        "cert": SECRET_OR_CONFIG_MAP,
        "keySecret": SECRET_KEY_SELECTOR,
        "serverName": {"type": "string", "minLength": 1},
        "insecureSkipVerify": {"type": "boolean"},
        "caFile": {"type": "string"},
        "certFile": {"type": "string"},
        "keyFile": {"type": "string"},
    }
)
DURATION = {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}
SERVICE_MONITOR_SCHEMA = kind_schema(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    closed_object(
        {
            "jobLabel": {"type": "string"},
            "selector": closed_object(
                {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}
            ),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": closed_object(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "tlsConfig": TLS_CONFIG,
                        "basicAuth": closed_object(
                            {"username": SECRET_KEY_SELECTOR, "password": SECRET_KEY_SELECTOR}
                        ),
                    }
                ),
            },
        },
        "selector",
        "endpoints",
    ),
)
TEMPLATE_SCHEMA = closed_object(
    {
        "apiVersion": {"const": "template.openshift.io/v1"},
        "kind": {"const": "Template"},
        "metadata": META,
        "message": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "objects": {
            "type": "array",
            "items": {"type": "object", "required": ["apiVersion", "kind", "metadata"]},
        },
        "parameters": {
            "type": "array",
            "items": closed_object(
                {
                    "name": {"type": "string", "pattern": "^[a-zA-Z0-9_]+$"},
                    "displayName": {"type": "string"},
                    "description": {"type": "string"},
                    "value": {"type": "string"},
                    "generate": {"const": "expression"},
                    "from": {"type": "string"},
                    "required": {"type": "boolean"},
                },
                "name",
            ),
        },
    },
    "apiVersion",
    "kind",
    "metadata",
    "objects",
    "parameters",
)
CUSTOM_SCHEMAS = {"Route": ROUTE_SCHEMA, "ServiceMonitor": SERVICE_MONITOR_SCHEMA}


def validate(obj: Mapping[str, Any], version: str) -> None:
    """Validate one object: Kubernetes kinds strictly (unknown fields are errors) against the
    schemas of `version`, the others against the schemas above."""
    if obj["kind"] in CUSTOM_SCHEMAS:
        jsonschema.validate(obj, CUSTOM_SCHEMAS[obj["kind"]])
    else:
        kubernetes_validate.validate(dict(obj), version, strict=True)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data = yaml.safe_load(TEMPLATE.read_text())
    assert isinstance(data, dict)
    return data


def processed(template: Mapping[str, Any], **values: str) -> dict[tuple[str, str], Any]:
    return by_key(oc_process(template, {**SEED_PARAMS, **values})["items"])


def pod_spec(objects: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    (deployment,) = [o for (kind, _), o in objects.items() if kind == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container_env(objects: Mapping[tuple[str, str], Any]) -> dict[str, str]:
    (container,) = pod_spec(objects)["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


# --- the template processor itself -------------------------------------------------------------


def _mini_template(parameters: list[dict[str, Any]], objects: list[Any]) -> dict[str, Any]:
    return {
        "apiVersion": "template.openshift.io/v1",
        "kind": "Template",
        "metadata": {"name": "t"},
        "parameters": parameters,
        "objects": objects,
    }


def test_processor_substitutes_strings_and_non_strings_as_oc_does() -> None:
    """`${X}` splices text; exact `${{X}}` becomes JSON when it parses, else stays a string."""
    t = _mini_template(
        [
            {"name": "N", "value": "3"},
            {"name": "J", "value": '{"a": "b"}'},
            {"name": "S", "value": "not json"},
            {"name": "B", "value": "true"},
        ],
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cm-${N}", "namespace": "fixed", "labels": {"k-${N}": "v"}},
                "data": {
                    "int": "${{N}}",
                    "json": "${{J}}",
                    "notjson": "${{S}}",
                    "bool": "${{B}}",
                    "spliced": "a${N}b${N}",
                    "not_exact": "${{N}}x",
                    "undeclared": "${NOPE}",
                    "list": ["${{N}}", "${N}"],
                },
            }
        ],
    )
    (obj,) = oc_process(t, {})["items"]
    assert obj["metadata"] == {"name": "cm-3", "namespace": "", "labels": {"k-3": "v"}}
    assert obj["data"] == {
        "int": 3,
        "json": {"a": "b"},
        "notjson": "not json",
        "bool": True,
        "spliced": "a3b3",
        "not_exact": "${{N}}x",
        "undeclared": "${NOPE}",
        "list": [3, "3"],
    }


def test_processor_refuses_missing_required_and_unknown_parameters(
    template: dict[str, Any],
) -> None:
    """Both are errors in `oc process`, before any object is produced."""
    with pytest.raises(TemplateError, match="parameter SERVICE_DEST is required"):
        oc_process(template, {k: v for k, v in SEED_PARAMS.items() if k != "SERVICE_DEST"})
    with pytest.raises(TemplateError, match="parameter IMAGE is required"):
        oc_process(template, {k: v for k, v in SEED_PARAMS.items() if k != "IMAGE"})
    with pytest.raises(TemplateError, match="parameter SERVICE_DEST is required"):
        oc_process(template, {**SEED_PARAMS, "SERVICE_DEST": ""})
    with pytest.raises(TemplateError, match="unknown parameter name 'SERVICE_DESTINATION'"):
        oc_process(template, {**SEED_PARAMS, "SERVICE_DESTINATION": "x"})


def test_processor_generates_expression_values() -> None:
    """`generate: expression` fills empty parameters from `[ranges]{n}`; a value wins."""
    t = _mini_template(
        [
            {"name": "PW", "generate": "expression", "from": "pw-[a-zA-Z0-9]{12}"},
            {"name": "DIGITS", "generate": "expression", "from": "[\\d]{6}"},
            {"name": "WORD", "generate": "expression", "from": "[\\w]{20}"},
            {"name": "GIVEN", "generate": "expression", "from": "[a-z]{4}", "value": "fixed"},
            {"name": "R", "generate": "expression", "from": "[a-z]{4}", "required": True},
        ],
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s"},
                "stringData": {
                    "pw": "${PW}",
                    "d": "${DIGITS}",
                    "w": "${WORD}",
                    "g": "${GIVEN}",
                    "r": "${R}",
                },
            }
        ],
    )
    (obj,) = oc_process(t, {}, seed=1)["items"]
    data = obj["stringData"]
    assert re.fullmatch(r"pw-[a-zA-Z0-9]{12}", data["pw"])
    assert re.fullmatch(r"[0-9]{6}", data["d"])
    assert re.fullmatch(r"\w{20}", data["w"])
    assert data["g"] == "fixed"
    assert re.fullmatch(r"[a-z]{4}", data["r"])
    assert oc_process(t, {}, seed=2)["items"][0]["stringData"]["pw"] != data["pw"]
    bad = _mini_template([{"name": "X", "generate": "expression", "from": "[a-z]{300}"}], [])
    with pytest.raises(TemplateError, match=r"within \[1-255\]"):
        oc_process(bad, {})


# --- the OpenShift template ------------------------------------------------------------------


def test_template_shape(template: dict[str, Any]) -> None:
    """A valid template.openshift.io/v1 Template with the seed's and the issue's parameters,
    every reference declared and every parameter used."""
    jsonschema.validate(template, TEMPLATE_SCHEMA)
    names = [p["name"] for p in template["parameters"]]
    assert len(names) == len(set(names))
    assert {
        "PROXY_SERVICE",
        "SERVICE_NAME",
        "SERVICE_TCP_PORT",
        "SERVICE_DEST_PORT",
        "SERVICE_DEST",
        "SCRAPER_TCP_PORT",
        "IMAGE",
        "REPLICAS",
        "NODE_SELECTOR",
        "EGRESS_SOURCE",
        "CONFIG_MAP_NAME",
        "SERVICE_MONITOR",
        "METRICS_WEB_CONFIG_FILE",
        "METRICS_WEB_CONFIG_SECRET",
        "METRICS_TLS_SECRET",
        "METRICS_SCRAPER_SECRET",
        "NAMESPACE",
    } <= set(names)
    params = {p["name"]: p for p in template["parameters"]}
    assert params["SERVICE_DEST"].get("required")
    assert not params["SERVICE_DEST"].get("value")
    assert params["SCRAPER_TCP_PORT"]["value"] == "9101"
    assert params["REPLICAS"]["value"] == "2"
    referenced = set()
    for text in [*_strings(template["objects"]), template["message"]]:
        referenced |= set(STRING_PARAM.findall(text))
        referenced |= set(re.findall(r"\$\{\{([a-zA-Z0-9_]+)\}\}", text))
    assert referenced == set(names)


def test_template_integer_fields_use_non_string_parameters(template: dict[str, Any]) -> None:
    """Ports, replicas and the grace period come out as JSON numbers, not strings."""
    objects = processed(template, REPLICAS="3", SERVICE_TCP_PORT="9443", SCRAPER_TCP_PORT="9200")
    deployment = objects[("Deployment", "test-scraper")]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports == {"route": 9443, "metrics": 9200}
    assert objects[("Service", "tst-scr-svc")]["spec"]["ports"][0]["port"] == 9443
    assert objects[("Service", "test-scraper")]["spec"]["ports"][0]["port"] == 9200
    # and the container still sees them as strings, as env values must be
    env = container_env(objects)
    assert env["SERVICE_TCP_PORT"] == "9443"
    assert env["SCRAPER_TCP_PORT"] == "9200"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_processed_template_validates(template: dict[str, Any], version: str) -> None:
    """Every object of the seed example validates, strictly, for each Kubernetes version."""
    objects = processed(template)
    assert {kind for kind, _ in objects} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "Route",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }
    for obj in objects.values():
        validate(obj, version)
        leftover = [s for s in _strings(obj) if "${" in s]
        assert not leftover, f"{obj['kind']}: unsubstituted {leftover}"


def test_processed_template_with_every_parameter_validates(template: dict[str, Any]) -> None:
    """Non-default values, a node selector (JSON) and a source address also validate."""
    objects = processed(
        template,
        REPLICAS="1",
        NODE_SELECTOR='{"node-role.kubernetes.io/egress": "", "topology.kubernetes.io/zone": "a"}',
        EGRESS_SOURCE="198.18.0.10",
        CONFIG_MAP_NAME="my-routes",
        DRAIN_SECONDS="60",
        TERMINATION_GRACE_SECONDS="75",
        SERVICE_MONITOR="true",
    )
    for obj in objects.values():
        validate(obj, K8S_VERSIONS[-1])
    pod = pod_spec(objects)
    assert pod["nodeSelector"] == {
        "node-role.kubernetes.io/egress": "",
        "topology.kubernetes.io/zone": "a",
    }
    assert pod["terminationGracePeriodSeconds"] == 75
    assert ("ConfigMap", "my-routes") in objects
    assert pod["volumes"][0]["configMap"]["name"] == "my-routes"
    env = container_env(objects)
    assert env["EGRESS_SOURCE"] == "198.18.0.10"
    assert env["EGRESS_DRAIN_SECONDS"] == "60"


def test_route_exposes_the_metrics_service(template: dict[str, Any]) -> None:
    """The seed's metrics Route: named PROXY_SERVICE, to its Service's `metrics` port, TLS."""
    objects = processed(template)
    route = objects[("Route", "test-scraper")]
    service = objects[("Service", route["spec"]["to"]["name"])]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert route["spec"]["port"]["targetPort"] in port_names
    assert route["spec"]["tls"]["termination"] == "edge"
    assert "host" not in route["spec"]  # the router's default domain names it


def test_pod_passes_restricted_v2(template: dict[str, Any]) -> None:
    """What the restricted-v2 SCC (and the restricted Pod Security Standard) demands."""
    pod = pod_spec(processed(template))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # OpenShift assigns the UID and the fsGroup from the project's range: none may be fixed.
    for key in ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups"):
        assert key not in pod["securityContext"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert {next(iter(set(v) - {"name"})) for v in pod["volumes"]} <= {
        "configMap",
        "emptyDir",
        "secret",
        "downwardAPI",
        "projected",
        "ephemeral",
    }
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    assert "runAsUser" not in sc
    assert all("hostPort" not in p for p in container["ports"])
    # the run dir is writable (an emptyDir), the config mount read-only
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = container_env(processed(template))
    assert not mounts[env["EGRESS_RUN_DIR"]].get("readOnly")
    assert mounts[env["EGRESS_CONFIG_DIR"]]["readOnly"] is True
    # the router listens unprivileged: no NET_BIND_SERVICE to bind below 1024
    assert all(p["containerPort"] >= 1024 for p in container["ports"])


def test_probes_selectors_and_ports_fit_together(template: dict[str, Any]) -> None:
    """Probes hit /readyz and /healthz on the metrics port; every selector picks the pods."""
    objects = processed(template)
    deployment = objects[("Deployment", "test-scraper")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = pod_spec(objects)
    (container,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert port_names["metrics"] == int(container_env(objects)["SCRAPER_TCP_PORT"])
    assert port_names["route"] == int(container_env(objects)["SERVICE_TCP_PORT"])

    def selects(selector: Mapping[str, str]) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    for (kind, _), obj in objects.items():
        if kind == "Service":
            assert selects(obj["spec"]["selector"])
            for port in obj["spec"]["ports"]:
                assert port["targetPort"] in port_names
        if kind == "PodDisruptionBudget":
            assert selects(obj["spec"]["selector"]["matchLabels"])
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    assert all(selects(c["labelSelector"]["matchLabels"]) for c in spread)
    assert objects[("PodDisruptionBudget", "test-scraper")]["spec"]["maxUnavailable"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_grace_period_covers_the_drain(template: dict[str, Any]) -> None:
    """Kubernetes must not SIGKILL a draining router: grace ≥ pre-stop + drain + margin."""
    objects = processed(template)
    pod = pod_spec(objects)
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(container_env(objects)["EGRESS_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain + 5


def test_config_map_is_mounted_where_the_router_reads(template: dict[str, Any]) -> None:
    """The ConfigMap is a volume (so edits reach the pod and reload), at EGRESS_CONFIG_DIR."""
    objects = processed(template, CONFIG_MAP_NAME="routes-x")
    pod = pod_spec(objects)
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[mount["name"]]["configMap"]["name"] == "routes-x"
    assert "subPath" not in mount  # a subPath mount never sees the kubelet's updates
    assert mount["mountPath"] == container_env(objects)["EGRESS_CONFIG_DIR"]


def test_service_monitor_is_enabled_by_its_parameter(template: dict[str, Any]) -> None:
    """SERVICE_MONITOR=false leaves the ServiceMonitor selecting nothing; true selects the
    metrics Service (and only it)."""

    def selected(objects: Mapping[tuple[str, str], Any]) -> list[str]:
        monitor = objects[("ServiceMonitor", "test-scraper")]
        selector = monitor["spec"]["selector"]["matchLabels"]
        return [
            name
            for (kind, name), obj in objects.items()
            if kind == "Service"
            and all(obj["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]

    assert selected(processed(template)) == []
    assert selected(processed(template, SERVICE_MONITOR="true")) == ["test-scraper"]
    monitor = processed(template)[("ServiceMonitor", "test-scraper")]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_template_documents_the_node_selector_pitfall() -> None:
    """The seed's warning: a project node selector conflicts with the pod's."""
    text = TEMPLATE.read_text()
    assert 'openshift.io/node-selector=""' in text


def test_rendered_environment_is_a_working_router_config(
    template: dict[str, Any], tmp_path: Path
) -> None:
    """The Deployment's env plus the ConfigMap's keys pass `haproxy-egress check` (the real
    loader, compiler and `haproxy -c`)."""
    objects = processed(template, SERVICE_DEST="198.18.0.10;198.18.0.11:8443")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for key, value in objects[("ConfigMap", "egress-routes")]["data"].items():
        (config_dir / key).write_text(value)
    env = {
        "PATH": os.environ["PATH"],
        **container_env(objects),
        "EGRESS_CONFIG_DIR": str(config_dir),
        "EGRESS_RUN_DIR": str(tmp_path / "run"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "haproxy_egress.cli", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "configuration OK: 1 route" in result.stdout


# --- the kustomize base ------------------------------------------------------------------------


def _overlay(tmp_path: Path) -> Path:
    """A user's overlay: the base, the ServiceMonitor component, a namespace and an image."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "egress",
                "resources": [os.path.relpath(KUSTOMIZE_BASE, overlay)],
                "components": [os.path.relpath(SERVICE_MONITOR_COMPONENT, overlay)],
                "images": [
                    {
                        "name": "haproxy-egress",
                        "newName": "registry.test/team/haproxy-egress",
                        "newTag": "1.2.3",
                    }
                ],
            }
        )
    )
    return overlay


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kustomize_base_validates(version: str, tmp_path: Path) -> None:
    """The base, and an overlay with the ServiceMonitor component, validate strictly."""
    base = by_key(kustomize(KUSTOMIZE_BASE))
    assert {kind for kind, _ in base} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    for obj in [*base.values(), *kustomize(_overlay(tmp_path))]:
        validate(obj, version)
    assert pod_spec(base)["containers"][0]["image"] == "haproxy-egress:0.1.0"


def test_kustomize_overlay_sets_namespace_image_and_monitor(tmp_path: Path) -> None:
    objects = by_key(kustomize(_overlay(tmp_path)))
    assert ("ServiceMonitor", "egress-router") in objects
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"egress"}
    image = pod_spec(objects)["containers"][0]["image"]
    assert image == "registry.test/team/haproxy-egress:1.2.3"


def test_kustomize_rules_match_kubectl(tmp_path: Path) -> None:
    """The real `kubectl kustomize` renders exactly what the rules in this file render."""
    assert by_key(kubectl_kustomize(KUSTOMIZE_BASE)) == by_key(kustomize(KUSTOMIZE_BASE))
    overlay = _overlay(tmp_path)
    assert by_key(kubectl_kustomize(overlay)) == by_key(kustomize(overlay))


def test_kustomize_base_is_the_template_without_openshift_parts(template: dict[str, Any]) -> None:
    """Both ship the same objects: the template processed with the base's values equals the
    base plus its ServiceMonitor component, apart from the Route and the template's labels."""
    values = {
        "IMAGE": "haproxy-egress:0.1.0",
        "SERVICE_DEST": "www.example.com",
        "SERVICE_MONITOR": "true",
    }
    from_template = by_key(oc_process(template, values)["items"])
    # OpenShift's own parts: the Route, the service-CA annotation, the HTTPS ServiceMonitor
    # that trusts the service CA (image/kubernetes/metrics-tls is the Kubernetes variant).
    del from_template[("Route", "egress-router")]
    del from_template[("ServiceMonitor", "egress-router-https")]
    del from_template[("Service", "egress-router")]["metadata"]["annotations"]
    for obj in from_template.values():
        for label in template["labels"]:
            del obj["metadata"]["labels"][label]
    from_kustomize = by_key(kustomize(KUSTOMIZE_BASE) + kustomize(SERVICE_MONITOR_COMPONENT))
    assert from_kustomize.keys() == from_template.keys()
    for key, obj in from_template.items():
        assert from_kustomize[key] == obj, key


# --- the metrics port under a web-config (TLS, client certificates) ----------------------

METRICS_TLS_COMPONENT = KUSTOMIZE_BASE / "metrics-tls"


def test_https_service_monitor_is_selected_by_its_parameter(template: dict[str, Any]) -> None:
    """SERVICE_MONITOR=https: only the HTTPS ServiceMonitor selects the metrics Service; it
    verifies the service-CA certificate the Service's annotation asks for, by its DNS name."""
    objects = processed(
        template,
        SERVICE_MONITOR="https",
        NAMESPACE="egress",
        METRICS_WEB_CONFIG_FILE="/etc/haproxy-egress-web/web-config.yml",
    )
    for obj in objects.values():
        validate(obj, K8S_VERSIONS[-1])
    service = objects[("Service", "test-scraper")]
    labels = service["metadata"]["labels"]
    selecting = [
        name
        for (kind, name), obj in objects.items()
        if kind == "ServiceMonitor"
        and obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert selecting == ["test-scraper-https"]
    (endpoint,) = objects[("ServiceMonitor", "test-scraper-https")]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    tls = endpoint["tlsConfig"]
    assert tls["serverName"] == "test-scraper.egress.svc"  # a service-CA certificate's SAN
    assert tls["ca"] == {"configMap": {"name": "openshift-service-ca.crt", "key": "service-ca.crt"}}
    assert tls["cert"]["secret"]["name"] == tls["keySecret"]["name"] == "egress-router-scraper-tls"
    annotation = service["metadata"]["annotations"]
    secret = annotation["service.beta.openshift.io/serving-cert-secret-name"]
    pod = pod_spec(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-tls"]["secret"] == {"secretName": secret, "optional": True}
    assert volumes["metrics-web-config"]["secret"]["optional"] is True
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "subPath" not in mounts["metrics-tls"]  # a subPath mount never sees a rotation
    web = container_env(objects)["EGRESS_WEB_CONFIG_FILE"]
    assert web.startswith(mounts["metrics-web-config"]["mountPath"] + "/")


def test_plain_http_is_the_default(template: dict[str, Any]) -> None:
    objects = processed(template)
    assert container_env(objects)["EGRESS_WEB_CONFIG_FILE"] == ""
    probes = pod_spec(objects)["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        # the metrics port answers the probes over plain HTTP under any web-config
        assert probes[probe]["httpGet"].get("scheme", "HTTP") == "HTTP"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kustomize_metrics_tls_component_validates(version: str, tmp_path: Path) -> None:
    """base + ServiceMonitor + metrics-tls, rendered by the real `kubectl kustomize`."""
    assert shutil.which("kubectl"), "kubectl (kustomize v5) is needed: ./dev.sh test installs it"
    overlay = _overlay(tmp_path)
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    spec["components"].append(os.path.relpath(METRICS_TLS_COMPONENT, overlay))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    objects = by_key(kubectl_kustomize(overlay))
    for obj in objects.values():
        validate(obj, version)
    env = [
        e
        for e in pod_spec(objects)["containers"][0]["env"]
        if e["name"] == "EGRESS_WEB_CONFIG_FILE"
    ]
    assert env == [
        {"name": "EGRESS_WEB_CONFIG_FILE", "value": "/etc/haproxy-egress-web/web-config.yml"}
    ]
    (endpoint,) = objects[("ServiceMonitor", "egress-router")]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {
        "name": "egress-router-metrics-tls",
        "key": "ca.crt",
    }
    # the certificate's DNS name is the metrics Service's name, whatever the namespace
    assert ("Service", endpoint["tlsConfig"]["serverName"]) in objects


# --- the policy proxy's users (a Secret beside the ConfigMap) ------------------------------


def test_proxy_users_secret_is_optional_and_named_by_the_env_var(template: dict[str, Any]) -> None:
    """PROXY_USERS_FILE names a file inside the optional Secret's mount (no subPath, so the
    kubelet's swap reaches it); empty, the router has no proxy users."""
    assert container_env(processed(template))["EGRESS_PROXY_USERS_FILE"] == ""
    objects = processed(
        template,
        PROXY_USERS_FILE="/etc/haproxy-egress-users/users",
        PROXY_USERS_SECRET="team-proxy-users",
    )
    for obj in objects.values():
        validate(obj, K8S_VERSIONS[-1])
    pod = pod_spec(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["proxy-users"]["secret"] == {"secretName": "team-proxy-users", "optional": True}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "subPath" not in mounts["proxy-users"]
    assert mounts["proxy-users"]["readOnly"] is True
    users = container_env(objects)["EGRESS_PROXY_USERS_FILE"]
    assert users.startswith(mounts["proxy-users"]["mountPath"] + "/")


# --- TLS origination: the client certificate and CA Secrets ----------------------------------


def test_tls_secrets_are_optional_mounts_without_subpath(template: dict[str, Any]) -> None:
    """The client certificate (kubernetes.io/tls) and CA Secrets are optional and mounted
    whole (no subPath, so the kubelet's `..data` swap of a rotation reaches the router), where
    docs/configuration.md's `tls:` examples point."""
    objects = processed(template, TLS_CLIENT_SECRET="partner-mtls", TLS_CA_SECRET="partner-ca")
    for obj in objects.values():
        validate(obj, K8S_VERSIONS[-1])
    pod = pod_spec(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls-client"]["secret"] == {"secretName": "partner-mtls", "optional": True}
    assert volumes["tls-ca"]["secret"] == {"secretName": "partner-ca", "optional": True}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    for name, path in (
        ("tls-client", "/etc/haproxy-egress-mtls"),
        ("tls-ca", "/etc/haproxy-egress-ca"),
    ):
        assert mounts[name] == {"name": name, "mountPath": path, "readOnly": True}
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert "client_cert_dir: /etc/haproxy-egress-mtls" in docs
    assert "ca_file: /etc/haproxy-egress-ca/ca.crt" in docs
