"""
Verification of the fake Kubernetes API server in C{tests/kubeapi.py}.

Three layers:

  - a contract suite run against C{kube_target} (the fake as a process,
    and a real cluster when C{BRIGADE_CR_TEST_KUBECONFIG} is set) through
    the official Kubernetes Python client and kubectl: what passes here
    against both is what the fake may be trusted for;
  - in-memory unit tests of L{FakeKube} through C{treq.testing.StubTreq},
    for what is cheaper or only possible there (exact messages, selector
    edge cases, resource versions, watch history and timeouts, faults);
  - pytest-twisted tests of the fake served over TLS in the test reactor
    (client certificates, watch clean-up on disconnect).
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from attrs import define
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from tests.kubeapi import (
    FakeKube,
    KubeError,
    LabelSelector,
    SelectorError,
    human_duration,
    parse_field_selector,
    parse_label_selector,
)
from tests.kubetarget import OTHER_NAMESPACE, KubeTarget

T = 10.0  # seconds: the request timeout of every client call

BUILD_TYPE = "brigade.sh/build"

CONFLICT_MESSAGE = (
    'Operation cannot be fulfilled on secrets "{}": the object has been '
    "modified; please apply your changes to the latest version and try again"
)
DNS1123_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
    "characters, '-' or '.', and must start and end with an alphanumeric "
    "character (e.g. 'example.com', regex used for validation is "
    r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def status_of(error: ApiException) -> dict[str, Any]:
    assert error.body is not None
    body: dict[str, Any] = json.loads(error.body)
    return body


def expect_status(call: Callable[[], Any], code: int, reason: str | None) -> dict[str, Any]:
    """Run C{call}, expect an C{ApiException} carrying a C{Status} failure."""
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status == code
    body = status_of(info.value)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body.get("reason") == reason
    return body


def raw_request(
    client: Any,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """
    Send C{body} (bytes as-is, anything else as JSON) with the official
    client's URL, auth headers and TLS pool, bypassing its serialisation;
    return (status, decoded JSON).
    """
    method, url, headers, _, _ = client.param_serialize(
        method,
        path,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    response = client.rest_client.pool_manager.request(
        method, url, body=data, headers=headers, timeout=T, preload_content=True
    )
    return response.status, json.loads(response.data)


# ---------------------------------------------------------------------------
# Contract suite: official client against the fake (and a real cluster)
# ---------------------------------------------------------------------------


def make_secret(target: KubeTarget, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """A Secret body with this test's label (plus C{labels=})."""
    labels = target.labels(**fields.pop("labels", {}))
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name or target.unique_name(), "labels": labels},
    }
    body.update(fields)
    return body


def test_create_get_round_trip(kube_target: KubeTarget) -> None:
    """
    Create returns the stored object with server-set metadata; stringData
    is merged into data (and wins) and dropped; get returns the same.
    """
    client = kube_target.api_client()
    core = kube_target.core(client)
    name = kube_target.unique_name("build")
    kube_target.track(name)
    created = core.create_namespaced_secret(
        kube_target.namespace,
        make_secret(
            kube_target,
            name,
            labels={"heritage": "brigade"},
            type=BUILD_TYPE,
            data={"a": b64("from data"), "b": b64("overridden")},
            stringData={"b": "from stringData", "c": "ç"},
        ),
        _request_timeout=T,
    )
    assert created.metadata.name == name
    assert created.metadata.namespace == kube_target.namespace
    assert created.metadata.uid
    assert created.metadata.resource_version.isdigit()
    assert created.metadata.creation_timestamp is not None
    assert created.type == BUILD_TYPE
    assert created.string_data is None
    assert created.data == {"a": b64("from data"), "b": b64("from stringData"), "c": b64("ç")}
    assert created.metadata.labels == kube_target.labels(heritage="brigade")

    got = core.read_namespaced_secret(name, kube_target.namespace, _request_timeout=T)
    assert client.sanitize_for_serialization(got) == client.sanitize_for_serialization(created)


def test_type_defaults_to_opaque(kube_target: KubeTarget) -> None:
    secret = kube_target.seed_secret(make_secret(kube_target))
    assert secret["type"] == "Opaque"
    assert "data" not in secret


def test_list_label_selectors(kube_target: KubeTarget) -> None:
    """Every label selector form restricts the list exactly."""
    labels = {
        "one": {"tier": "a", "env": "prod"},
        "two": {"tier": "b", "env": "prod"},
        "three": {"tier": "c"},
        "four": {},
    }
    names = {}
    for short, extra in labels.items():
        secret = kube_target.seed_secret(make_secret(kube_target, labels=extra))
        names[secret["metadata"]["name"]] = short
    core = kube_target.core()

    def selected(selector: str) -> set[str]:
        result = core.list_namespaced_secret(
            kube_target.namespace,
            label_selector=f"{kube_target.label_selector},{selector}" if selector else kube_target.label_selector,
            _request_timeout=T,
        )
        assert result.metadata.resource_version
        return {names[item.metadata.name] for item in result.items}

    assert selected("") == {"one", "two", "three", "four"}
    assert selected("tier=a") == {"one"}
    assert selected("tier==b") == {"two"}
    assert selected("tier!=a") == {"two", "three", "four"}
    assert selected("tier in (a, c)") == {"one", "three"}
    assert selected("tier notin (a,c)") == {"two", "four"}
    assert selected("env") == {"one", "two"}
    assert selected("!env") == {"three", "four"}
    assert selected("env=prod,tier!=b") == {"one"}
    assert selected("tier=zzz") == set()


def test_list_field_selectors(kube_target: KubeTarget) -> None:
    """
    The Brigade controller lists with C{type=brigade.sh/build} and a label
    selector; C{metadata.name} and C{metadata.namespace} work too.
    """
    build = kube_target.seed_secret(make_secret(kube_target, labels={"heritage": "brigade"}, type=BUILD_TYPE))
    other = kube_target.seed_secret(make_secret(kube_target, labels={"heritage": "brigade"}))
    build_name, other_name = build["metadata"]["name"], other["metadata"]["name"]
    core = kube_target.core()

    def selected(field_selector: str, namespace: str | None = None) -> set[str]:
        if namespace is None:
            result = core.list_secret_for_all_namespaces(
                label_selector=f"heritage=brigade,{kube_target.label_selector}",
                field_selector=field_selector,
                _request_timeout=T,
            )
        else:
            result = core.list_namespaced_secret(
                namespace,
                label_selector=f"heritage=brigade,{kube_target.label_selector}",
                field_selector=field_selector,
                _request_timeout=T,
            )
        return {item.metadata.name for item in result.items}

    ns = kube_target.namespace
    assert selected(f"type={BUILD_TYPE}", ns) == {build_name}
    assert selected(f"type=={BUILD_TYPE}", ns) == {build_name}
    assert selected(f"type!={BUILD_TYPE}", ns) == {other_name}
    assert selected(f"metadata.name={other_name}", ns) == {other_name}
    assert selected(f"metadata.name={build_name},type={BUILD_TYPE}", ns) == {build_name}
    assert selected(f"metadata.namespace={ns}") == {build_name, other_name}
    assert selected("metadata.namespace=brigade-cr-no-such-namespace") == set()
    assert selected(f"type={BUILD_TYPE}") == {build_name}


def test_unsupported_field_selector_is_bad_request(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    body = expect_status(
        lambda: core.list_namespaced_secret(kube_target.namespace, field_selector="spec.foo=bar", _request_timeout=T),
        400,
        "BadRequest",
    )
    assert body["message"] == "field label not supported: spec.foo"


@pytest.mark.parametrize("selector", ["tier in (a", "tier notin", "a=b=c", "a b", "Bad Key!=x"])
def test_malformed_label_selector_is_bad_request(kube_target: KubeTarget, selector: str) -> None:
    core = kube_target.core()
    expect_status(
        lambda: core.list_namespaced_secret(kube_target.namespace, label_selector=selector, _request_timeout=T),
        400,
        "BadRequest",
    )


def test_update_with_resource_version(kube_target: KubeTarget) -> None:
    """
    An update carrying the current resourceVersion succeeds and changes it;
    one carrying a stale resourceVersion fails with 409 Conflict.
    """
    core = kube_target.core()
    ns = kube_target.namespace
    seeded = kube_target.seed_secret(make_secret(kube_target, stringData={"k": "v1"}))
    name = seeded["metadata"]["name"]
    stale = core.read_namespaced_secret(name, ns, _request_timeout=T)
    fresh = core.read_namespaced_secret(name, ns, _request_timeout=T)
    fresh.data = {"k": b64("v2")}
    updated = core.replace_namespaced_secret(name, ns, fresh, _request_timeout=T)
    assert updated.data == {"k": b64("v2")}
    assert updated.metadata.resource_version != stale.metadata.resource_version
    assert updated.metadata.uid == seeded["metadata"]["uid"]
    assert updated.metadata.creation_timestamp == stale.metadata.creation_timestamp

    stale.data = {"k": b64("v3")}
    body = expect_status(
        lambda: core.replace_namespaced_secret(name, ns, stale, _request_timeout=T),
        409,
        "Conflict",
    )
    assert body["message"] == CONFLICT_MESSAGE.format(name)
    assert body["details"] == {"name": name, "kind": "secrets"}
    assert core.read_namespaced_secret(name, ns, _request_timeout=T).data == {"k": b64("v2")}


def test_update_without_resource_version_is_unconditional(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    seeded = kube_target.seed_secret(make_secret(kube_target, stringData={"k": "v1"}))
    name = seeded["metadata"]["name"]
    body = make_secret(kube_target, name, data={"k": b64("v9")})
    updated = core.replace_namespaced_secret(name, kube_target.namespace, body, _request_timeout=T)
    assert updated.data == {"k": b64("v9")}
    assert int(updated.metadata.resource_version) > int(seeded["metadata"]["resourceVersion"])


def test_update_missing_is_not_found(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    name = kube_target.unique_name("missing")
    body = expect_status(
        lambda: core.replace_namespaced_secret(
            name, kube_target.namespace, make_secret(kube_target, name), _request_timeout=T
        ),
        404,
        "NotFound",
    )
    assert body["message"] == f'secrets "{name}" not found'


def test_changing_type_is_invalid(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    seeded = kube_target.seed_secret(make_secret(kube_target, type=BUILD_TYPE))
    name = seeded["metadata"]["name"]
    body = expect_status(
        lambda: core.replace_namespaced_secret(
            name, kube_target.namespace, make_secret(kube_target, name, type="Opaque"), _request_timeout=T
        ),
        422,
        "Invalid",
    )
    assert body["details"]["name"] == name
    assert body["details"]["kind"] == "Secret"
    assert body["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "Opaque": field is immutable', "field": "type"}
    ]


def test_merge_patch(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    seeded = kube_target.seed_secret(make_secret(kube_target, stringData={"k": "v", "gone": "x"}))
    name = seeded["metadata"]["name"]
    patched = core.patch_namespaced_secret(
        name,
        kube_target.namespace,
        {"metadata": {"labels": {"phase": "done"}}, "data": {"gone": None, "new": b64("n")}},
        _content_type="application/merge-patch+json",
        _request_timeout=T,
    )
    assert patched.metadata.labels == kube_target.labels(phase="done")
    assert patched.data == {"k": b64("v"), "new": b64("n")}
    assert patched.metadata.resource_version != seeded["metadata"]["resourceVersion"]


def test_already_exists(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    seeded = kube_target.seed_secret(make_secret(kube_target))
    name = seeded["metadata"]["name"]
    body = expect_status(
        lambda: core.create_namespaced_secret(
            kube_target.namespace, make_secret(kube_target, name), _request_timeout=T
        ),
        409,
        "AlreadyExists",
    )
    assert body["message"] == f'secrets "{name}" already exists'
    assert body["details"] == {"name": name, "kind": "secrets"}


def test_invalid_name(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    body = expect_status(
        lambda: core.create_namespaced_secret(
            kube_target.namespace, make_secret(kube_target, "Bad_Name"), _request_timeout=T
        ),
        422,
        "Invalid",
    )
    assert body["message"] == (
        f'Secret "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": {DNS1123_MESSAGE}'
    )
    assert body["details"] == {
        "name": "Bad_Name",
        "kind": "Secret",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": f'Invalid value: "Bad_Name": {DNS1123_MESSAGE}',
                "field": "metadata.name",
            }
        ],
    }


def test_missing_name(kube_target: KubeTarget) -> None:
    client = kube_target.api_client()
    status, body = raw_request(
        client,
        "POST",
        f"/api/v1/namespaces/{kube_target.namespace}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"labels": kube_target.labels()}},
    )
    assert status == 422, body
    assert body["reason"] == "Invalid"
    assert body["message"] == 'Secret "" is invalid: metadata.name: Required value: name or generateName is required'
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value: name or generateName is required",
            "field": "metadata.name",
        }
    ]


def test_generate_name(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    body = make_secret(kube_target)
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "gen-"
    created = core.create_namespaced_secret(kube_target.namespace, body, _request_timeout=T)
    kube_target.track(created.metadata.name)
    assert created.metadata.name.startswith("gen-")
    assert len(created.metadata.name) == len("gen-") + 5
    assert created.metadata.generate_name == "gen-"


def test_invalid_data_key(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    name = kube_target.unique_name()
    body = expect_status(
        lambda: core.create_namespaced_secret(
            kube_target.namespace, make_secret(kube_target, name, data={"bad key": b64("x")}), _request_timeout=T
        ),
        422,
        "Invalid",
    )
    (cause,) = body["details"]["causes"]
    assert cause["field"] == "data[bad key]"
    assert cause["reason"] == "FieldValueInvalid"
    assert cause["message"].startswith('Invalid value: "bad key": a valid config key must consist of')


def test_too_large(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    name = kube_target.unique_name()
    big = base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()
    body = expect_status(
        lambda: core.create_namespaced_secret(
            kube_target.namespace, make_secret(kube_target, name, data={"big": big}), _request_timeout=T
        ),
        422,
        "Invalid",
    )
    assert body["details"]["causes"] == [
        {"reason": "FieldValueTooLong", "message": "Too long: must have at most 1048576 bytes", "field": "data"}
    ]


def test_bad_base64_is_bad_request(kube_target: KubeTarget) -> None:
    """
    Data values are []byte in Go, so undecodable base64 fails in the
    decoder (400 BadRequest), not in validation (422).
    """
    client = kube_target.api_client()
    status, body = raw_request(
        client,
        "POST",
        f"/api/v1/namespaces/{kube_target.namespace}/secrets",
        make_secret(kube_target, data={"k": "not base64!"}),
    )
    assert status == 400
    assert body["reason"] == "BadRequest"
    assert body["message"].startswith('Secret in version "v1" cannot be handled as a Secret: ')
    assert "illegal base64 data at input byte" in body["message"]


def test_body_not_json_is_bad_request(kube_target: KubeTarget) -> None:
    status, body = raw_request(
        kube_target.api_client(), "POST", f"/api/v1/namespaces/{kube_target.namespace}/secrets", b"{not json"
    )
    assert status == 400
    assert body["reason"] == "BadRequest"


def test_namespace_mismatch_is_bad_request(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    body = make_secret(kube_target)
    body["metadata"]["namespace"] = OTHER_NAMESPACE
    status = expect_status(
        lambda: core.create_namespaced_secret(kube_target.namespace, body, _request_timeout=T),
        400,
        "BadRequest",
    )
    assert status["message"] == (
        "the namespace of the provided object does not match the namespace sent on the request"
    )


def test_create_in_missing_namespace(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    namespace = f"brigade-cr-missing-{kube_target.run_id}"
    body = expect_status(
        lambda: core.create_namespaced_secret(namespace, make_secret(kube_target), _request_timeout=T),
        404,
        "NotFound",
    )
    assert body["message"] == f'namespaces "{namespace}" not found'
    assert body["details"] == {"name": namespace, "kind": "namespaces"}


def test_get_missing(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    name = kube_target.unique_name("nope")
    body = expect_status(
        lambda: core.read_namespaced_secret(name, kube_target.namespace, _request_timeout=T),
        404,
        "NotFound",
    )
    assert body["message"] == f'secrets "{name}" not found'
    assert body["details"] == {"name": name, "kind": "secrets"}


def test_delete(kube_target: KubeTarget) -> None:
    client = kube_target.api_client()
    seeded = kube_target.seed_secret(make_secret(kube_target))
    name, uid = seeded["metadata"]["name"], seeded["metadata"]["uid"]
    status, body = raw_request(client, "DELETE", f"/api/v1/namespaces/{kube_target.namespace}/secrets/{name}")
    assert status == 200
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": "secrets", "uid": uid},
    }
    core = kube_target.core(client)
    expect_status(lambda: core.read_namespaced_secret(name, kube_target.namespace, _request_timeout=T), 404, "NotFound")
    body = expect_status(
        lambda: core.delete_namespaced_secret(name, kube_target.namespace, _request_timeout=T), 404, "NotFound"
    )
    assert body["message"] == f'secrets "{name}" not found'


def test_delete_collection(kube_target: KubeTarget) -> None:
    core = kube_target.core()
    for _ in range(3):
        kube_target.seed_secret(make_secret(kube_target, labels={"batch": "x"}))
    keep = kube_target.seed_secret(make_secret(kube_target))
    core.delete_collection_namespaced_secret(
        kube_target.namespace, label_selector=f"{kube_target.label_selector},batch=x", _request_timeout=T
    )
    left = core.list_namespaced_secret(
        kube_target.namespace, label_selector=kube_target.label_selector, _request_timeout=T
    )
    assert [item.metadata.name for item in left.items] == [keep["metadata"]["name"]]


def test_wrong_token_is_unauthorized(kube_target: KubeTarget) -> None:
    core = kube_target.core(kube_target.unauthenticated_client())
    body = expect_status(
        lambda: core.list_namespaced_secret(kube_target.namespace, _request_timeout=T), 401, "Unauthorized"
    )
    assert body["message"] == "Unauthorized"


def test_discovery(kube_target: KubeTarget) -> None:
    client = kube_target.api_client()
    status, api = raw_request(client, "GET", "/api")
    assert status == 200
    assert api["kind"] == "APIVersions"
    assert api["versions"] == ["v1"]
    status, resources = raw_request(client, "GET", "/api/v1")
    assert status == 200
    assert resources["kind"] == "APIResourceList"
    assert resources["groupVersion"] == "v1"
    secrets = next(r for r in resources["resources"] if r["name"] == "secrets")
    assert secrets["namespaced"] is True
    assert secrets["kind"] == "Secret"
    assert set(secrets["verbs"]) == {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
    status, version = raw_request(client, "GET", "/version")
    assert status == 200
    assert version["major"] == "1"
    assert version["gitVersion"].startswith("v1.")


def test_unknown_path_is_not_found(kube_target: KubeTarget) -> None:
    status, body = raw_request(kube_target.api_client(), "GET", "/api/v1/brigade-cr-no-such-resource")
    assert status == 404
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "details": {},
        "code": 404,
    }


def _watch_in_thread(
    target: KubeTarget, want: int, **kwargs: Any
) -> tuple[queue.Queue[tuple[str, str, dict[str, str]]], threading.Thread]:
    """
    Watch Secrets in a thread until C{want} events arrived (or the stream
    ends); events go to the queue as (type, name, labels), then C{None}.
    """
    events: queue.Queue[Any] = queue.Queue()
    core = target.core()

    def run() -> None:
        seen = 0
        try:
            for event in watch.Watch().stream(
                core.list_namespaced_secret, namespace=target.namespace, _request_timeout=T, **kwargs
            ):
                obj = event["object"]
                events.put((event["type"], obj.metadata.name, obj.metadata.labels or {}))
                seen += 1
                if seen >= want:
                    break
        except Exception as e:  # reported to the test through the queue
            events.put(("EXCEPTION", repr(e), {}))
        finally:
            events.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return events, thread


def _drain(events: queue.Queue[Any], thread: threading.Thread, timeout: float = T) -> list[Any]:
    deadline = time.monotonic() + timeout
    out = []
    while True:
        item = events.get(timeout=max(deadline - time.monotonic(), 0.01))
        if item is None:
            break
        out.append(item)
    thread.join(timeout=max(deadline - time.monotonic(), 0.01))
    assert not thread.is_alive()
    return out


def test_watch_from_resource_version(kube_target: KubeTarget) -> None:
    """
    A watch from a list's resourceVersion sees ADDED, MODIFIED and DELETED
    for later writes, restricted by the label selector.
    """
    core = kube_target.core()
    ns = kube_target.namespace
    rv = core.list_namespaced_secret(ns, label_selector=kube_target.label_selector, _request_timeout=T)
    events, thread = _watch_in_thread(
        kube_target,
        3,
        label_selector=kube_target.label_selector,
        resource_version=rv.metadata.resource_version,
        timeout_seconds=8,
    )
    seeded = kube_target.seed_secret(make_secret(kube_target, stringData={"k": "v"}))
    name = seeded["metadata"]["name"]
    core.patch_namespaced_secret(
        name,
        ns,
        {"metadata": {"labels": {"step": "2"}}},
        _content_type="application/merge-patch+json",
        _request_timeout=T,
    )
    core.delete_namespaced_secret(name, ns, _request_timeout=T)
    assert _drain(events, thread) == [
        ("ADDED", name, kube_target.labels()),
        ("MODIFIED", name, kube_target.labels(step="2")),
        ("DELETED", name, kube_target.labels(step="2")),
    ]


def test_watch_without_resource_version_lists_existing(kube_target: KubeTarget) -> None:
    first = kube_target.seed_secret(make_secret(kube_target))
    second = kube_target.seed_secret(make_secret(kube_target))
    events, thread = _watch_in_thread(kube_target, 2, label_selector=kube_target.label_selector, timeout_seconds=8)
    got = _drain(events, thread)
    assert sorted(got) == sorted(
        [
            ("ADDED", first["metadata"]["name"], kube_target.labels()),
            ("ADDED", second["metadata"]["name"], kube_target.labels()),
        ]
    )


def test_watch_selector_transitions(kube_target: KubeTarget) -> None:
    """
    With a selector, an object whose labels stop matching is DELETED for
    the watcher, and ADDED when they match again.
    """
    core = kube_target.core()
    ns = kube_target.namespace
    seeded = kube_target.seed_secret(make_secret(kube_target, labels={"watched": "yes"}))
    name = seeded["metadata"]["name"]
    events, thread = _watch_in_thread(
        kube_target,
        2,
        label_selector=f"{kube_target.label_selector},watched=yes",
        resource_version=seeded["metadata"]["resourceVersion"],
        timeout_seconds=8,
    )
    for value in ("no", "yes"):
        core.patch_namespaced_secret(
            name,
            ns,
            {"metadata": {"labels": {"watched": value}}},
            _content_type="application/merge-patch+json",
            _request_timeout=T,
        )
    assert [(kind, n) for kind, n, _ in _drain(events, thread)] == [("DELETED", name), ("ADDED", name)]


def test_watch_field_selector_type(kube_target: KubeTarget) -> None:
    """The controller's watch: label selector plus C{type=brigade.sh/build}."""
    core = kube_target.core()
    rv = core.list_namespaced_secret(kube_target.namespace, limit=1, _request_timeout=T).metadata.resource_version
    events, thread = _watch_in_thread(
        kube_target,
        1,
        label_selector=f"heritage=brigade,{kube_target.label_selector}",
        field_selector=f"type={BUILD_TYPE}",
        resource_version=rv,
        timeout_seconds=8,
    )
    kube_target.seed_secret(make_secret(kube_target, labels={"heritage": "brigade"}))  # Opaque: not seen
    build = kube_target.seed_secret(make_secret(kube_target, labels={"heritage": "brigade"}, type=BUILD_TYPE))
    got = _drain(events, thread)
    assert [(kind, n) for kind, n, _ in got] == [("ADDED", build["metadata"]["name"])]


@pytest.mark.slow
def test_watch_bookmark_with_official_client(fake_kube_process: Any) -> None:
    """
    The official client's watch with allow_watch_bookmarks gets the fake's
    BOOKMARK as the watch times out, and takes its resourceVersion (the
    fake only: a real apiserver sends bookmarks on its own schedule).
    """
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=fake_kube_process.kubeconfig)
    try:
        core = client.CoreV1Api(api)
        listed = core.list_namespaced_secret("default", label_selector="nothing=here", _request_timeout=T)
        assert listed.metadata is not None and listed.metadata.resource_version is not None
        listed_version = listed.metadata.resource_version
        watcher = watch.Watch()
        events = list(
            itertools.islice(
                watcher.stream(
                    core.list_namespaced_secret,
                    namespace="default",
                    label_selector="nothing=here",
                    resource_version=listed_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=1,
                    _request_timeout=T,
                ),
                5,
            )
        )
    finally:
        api.close()
    assert [event["type"] for event in events] == ["BOOKMARK"]
    bookmarked = events[0]["raw_object"]["metadata"]["resourceVersion"]
    assert int(bookmarked) >= int(listed_version)
    assert watcher.resource_version == bookmarked


def test_watch_ends_at_timeout(kube_target: KubeTarget) -> None:
    """
    A watch with timeoutSeconds ends by itself, without an event (waited for
    at most T seconds); when it ends is asserted on a Clock
    (test_mem_watch_initial_and_live).
    """
    selector = f"{kube_target.label_selector},nothing=here"
    events, thread = _watch_in_thread(kube_target, 1, label_selector=selector, timeout_seconds=1)
    assert _drain(events, thread) == []
    if kube_target.fake is not None:
        watches = [call["query"] for call in kube_target.fake.calls() if call["verb"] == "watch"]
        assert [query.get("timeoutSeconds") for query in watches if selector in query.get("labelSelector", "")] == ["1"]


# ---------------------------------------------------------------------------
# Contract suite: kubectl
# ---------------------------------------------------------------------------


def _find_kubectl() -> tuple[str | None, str | None]:
    """(path to a runnable kubectl, None) or (None, why it cannot be used)."""
    path = shutil.which("kubectl")
    if path is None:
        return None, "kubectl is not installed (not on PATH)"
    try:
        result = subprocess.run(
            [path, "version", "--client", "-o", "json"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"kubectl cannot run: {e!r}"
    if result.returncode != 0:
        return None, f"kubectl cannot run: exit {result.returncode}: {result.stderr.decode(errors='replace')[:500]}"
    return path, None


_KUBECTL: list[tuple[str | None, str | None]] = []


@pytest.fixture
def kubectl(kube_target: KubeTarget, tmp_path: Any) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run kubectl against C{kube_target} (skipped if kubectl is absent or cannot run)."""
    if not _KUBECTL:
        _KUBECTL.append(_find_kubectl())
    path, problem = _KUBECTL[0]
    if path is None:
        pytest.skip(problem or "no kubectl")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                path,
                "--kubeconfig",
                kube_target.kubeconfig,
                "--cache-dir",
                str(tmp_path / "kube-cache"),
                "--request-timeout",
                "10s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    yield run


def test_kubectl_create_and_get(kube_target: KubeTarget, kubectl: Any, tmp_path: Any) -> None:
    name = kube_target.unique_name("kubectl")
    kube_target.track(name)
    manifest = tmp_path / "secret.json"
    manifest.write_text(
        json.dumps(
            make_secret(kube_target, name, labels={"heritage": "brigade"}, type=BUILD_TYPE, stringData={"k": "v"})
        )
    )
    ns = kube_target.namespace
    created = kubectl("create", "-f", str(manifest), "-n", ns)
    assert created.stdout.strip() == f"secret/{name} created"

    selector = f"heritage=brigade,{kube_target.label_selector}"
    listed = json.loads(kubectl("get", "secrets", "-n", ns, "-l", selector, "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == [name]
    (item,) = listed["items"]
    assert item["type"] == BUILD_TYPE
    assert item["data"] == {"k": b64("v")}

    assert kubectl("get", "secrets", "-n", ns, "-l", selector, "-o", "name").stdout.split() == [f"secret/{name}"]
    brigade = kubectl("get", "secrets", "-n", ns, "-l", "heritage=brigade", "-o", "name").stdout.split()
    assert f"secret/{name}" in brigade

    table = kubectl("get", "secrets", "-n", ns, "-l", selector).stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert table[1].split()[:3] == [name, BUILD_TYPE, "1"]

    again = kubectl("create", "-f", str(manifest), "-n", ns, check=False)
    assert again.returncode != 0
    assert f'secrets "{name}" already exists' in again.stderr
    assert "(AlreadyExists)" in again.stderr


def test_kubectl_wrong_token(kube_target: KubeTarget, kubectl: Any) -> None:
    result = kubectl("get", "secrets", "-n", kube_target.namespace, "--token", "wrong-token", check=False)
    assert result.returncode != 0
    # kubectl's wording for a 401 Status (reason Unauthorized):
    assert "You must be logged in to the server" in result.stderr


# ---------------------------------------------------------------------------
# In memory: FakeKube through StubTreq
# ---------------------------------------------------------------------------

TOKEN = "t0ken"
START = 1_700_000_000.0


@define
class Mem:
    """A FakeKube on a Clock, driven synchronously through StubTreq."""

    fake: FakeKube
    clock: Clock
    stub: Any  # a StubTreq: its request methods are set at run time, untyped

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = TOKEN,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """Return (code, response headers, decoded JSON body)."""
        all_headers = {"Content-Type": content_type, **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        results: list[Any] = []
        d = self.stub.request(method, "https://kube.test" + path, headers=all_headers, data=data)
        d.addCallback(
            lambda r: treq.content(r).addCallback(lambda c: results.append((r.code, r.headers, json.loads(c))))
        )
        d.addErrback(results.append)
        self.stub.flush()
        assert len(results) == 1, "request did not complete"
        if not isinstance(results[0], tuple):
            results[0].raiseException()
        answer: tuple[int, Any, Any] = results[0]
        return answer

    def create(self, name: str, namespace: str = "default", **fields: Any) -> dict[str, Any]:
        code, _, body = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": name}, **fields}
        )
        assert code == 201, body
        created: dict[str, Any] = body
        return created

    def watch(self, path: str) -> tuple[Any, list[bytes], list[Any]]:
        """Open a watch; return (response, received chunks, [finished marker])."""
        responses: list[Any] = []
        d = self.stub.get("https://kube.test" + path, headers={"Authorization": f"Bearer {TOKEN}"})
        d.addCallback(responses.append)
        self.stub.flush()
        assert len(responses) == 1
        chunks: list[bytes] = []
        finished: list[Any] = []
        treq.collect(responses[0], chunks.append).addBoth(finished.append)
        self.stub.flush()
        return responses[0], chunks, finished


def events_of(chunks: list[bytes]) -> list[tuple[str, Any]]:
    lines = b"".join(chunks).splitlines()
    out = []
    for line in lines:
        event = json.loads(line)
        obj = event["object"]
        out.append((event["type"], obj["metadata"].get("name") if obj.get("kind") == "Secret" else obj))
    return out


@pytest.fixture
def mem() -> Mem:
    clock = Clock()
    clock.advance(START)
    fake = FakeKube(clock=clock, tokens={TOKEN}, initial_namespaces=("default", "other"))
    return Mem(fake, clock, StubTreq(fake.resource()))


def test_mem_create_sets_metadata(mem: Mem) -> None:
    created = mem.create("s", stringData={"k": "v"})
    assert list(created) == ["kind", "apiVersion", "metadata", "data", "type"]
    assert created["metadata"]["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert created["metadata"]["namespace"] == "default"
    assert created["metadata"]["resourceVersion"] == str(mem.fake.resource_version)
    assert mem.fake.get_secret("default", "s") == created
    assert mem.fake.secrets("default") == [created]
    assert mem.fake.secrets("other") == []


def test_mem_resource_versions(mem: Mem) -> None:
    """Every write bumps the global resourceVersion; a no-op update does not."""
    start = mem.fake.resource_version
    a = mem.create("a")
    b = mem.create("b", namespace="other")
    assert (a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]) == (str(start + 1), str(start + 2))
    code, _, same = mem.request("PUT", "/api/v1/namespaces/default/secrets/a", a)
    assert code == 200
    assert same == a
    assert mem.fake.resource_version == start + 2
    a["data"] = {"k": "dg=="}
    code, _, changed = mem.request("PUT", "/api/v1/namespaces/default/secrets/a", a)
    assert changed["metadata"]["resourceVersion"] == str(start + 3)
    code, _, listed = mem.request("GET", "/api/v1/secrets")
    assert listed["metadata"]["resourceVersion"] == str(start + 3)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    code, _, _ = mem.request("DELETE", "/api/v1/namespaces/default/secrets/a")
    assert mem.fake.resource_version == start + 4


def test_mem_auth(mem: Mem) -> None:
    for token in (None, "wrong"):
        for path in ("/version", "/api", "/api/v1/namespaces/default/secrets", "/no/such/path"):
            code, _, body = mem.request("GET", path, token=token)
            assert code == 401
            assert body == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
    code, _, _ = mem.request("GET", "/version", headers={"Authorization": f"bearer {TOKEN}"}, token=None)
    assert code == 200
    assert mem.fake.count(kind="discovery") == 5
    assert mem.fake.count(kind="unknown") == 2
    assert not mem.fake.calls[0].authenticated


def test_mem_auth_off_with_no_tokens() -> None:
    fake = FakeKube(clock=Clock())
    code = []
    stub: Any = StubTreq(fake.resource())
    stub.get("https://kube.test/api/v1/namespaces/default/secrets").addCallback(lambda r: code.append(r.code))
    assert code == [200]


def test_mem_discovery_shapes(mem: Mem) -> None:
    code, headers, version = mem.request(
        "GET",
        "/api",
        headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"},
    )
    assert code == 200
    assert headers.getRawHeaders("content-type") == ["application/json"]
    assert version["kind"] == "APIVersions"
    assert version["serverAddressByClientCIDRs"][0]["clientCIDR"] == "0.0.0.0/0"
    assert mem.request("GET", "/apis")[2] == {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
    assert mem.request("GET", "/version")[2]["gitVersion"] == "v1.30.0-fake"
    namespaces = mem.request("GET", "/api/v1/namespaces")[2]
    assert [n["metadata"]["name"] for n in namespaces["items"]] == ["default", "other"]
    code, _, missing = mem.request("GET", "/api/v1/namespaces/nope")
    assert (code, missing["message"]) == (404, 'namespaces "nope" not found')
    code, _, body = mem.request("PUT", "/api/v1/namespaces/default/secrets")
    assert (code, body["reason"]) == (405, "MethodNotAllowed")


def test_mem_health(mem: Mem) -> None:
    results: list[Any] = []

    async def fetch(path: str) -> None:
        response = await mem.stub.get("https://kube.test" + path, headers={"Authorization": f"Bearer {TOKEN}"})
        results.append((path, response.code, await response.content()))

    for path in ("/healthz", "/livez", "/readyz"):
        ensureDeferred(fetch(path))
        mem.stub.flush()
    assert results == [("/healthz", 200, b"ok"), ("/livez", 200, b"ok"), ("/readyz", 200, b"ok")]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", set()),
        ("a", {("a", "exists")}),
        ("!a", {("a", "!")}),
        ("a=b", {("a", "=")}),
        (" a == b ", {("a", "==")}),
        ("a!=b", {("a", "!=")}),
        ("a in (b, c),x notin (y)", {("a", "in"), ("x", "notin")}),
        ("example.com/a=b", {("example.com/a", "=")}),
        ("a>1,b<2", {("a", "gt"), ("b", "lt")}),
        ("a=", {("a", "=")}),
        ("a in (in, notin)", {("a", "in")}),
    ],
)
def test_label_selector_parses(selector: str, expected: set[tuple[str, str]]) -> None:
    parsed = parse_label_selector(selector)
    assert {(r.key, r.op) for r in parsed.requirements} == expected


@pytest.mark.parametrize(
    "selector",
    [
        "a in (b",
        "a in b",
        "a notin",
        "=b",
        "a=b=c",
        "a b",
        "a,",
        ",a",
        "!a=b",
        "a=(b)",
        "Bad Key",
        "a=b!",
        "a>x",
        "a/b/c=d",
        "a=" + "v" * 64,
        "-a=b",
        "a in (b,,c)x",
    ],
)
def test_label_selector_rejects(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_label_selector_semantics() -> None:
    labels = {"a": "1", "b": "x"}
    assert parse_label_selector("a=1,b").matches(labels)
    assert parse_label_selector("a in (1,2)").matches(labels)
    assert not parse_label_selector("a notin (1,2)").matches(labels)
    assert parse_label_selector("c notin (1)").matches(labels)
    assert parse_label_selector("c!=1").matches(labels)
    assert parse_label_selector("a>0,a<2").matches(labels)
    assert not parse_label_selector("b>0").matches(labels)
    assert not parse_label_selector("c>0").matches(labels)
    assert parse_label_selector("c=").matches({"c": ""})
    assert not parse_label_selector("c=").matches({})
    assert LabelSelector().matches(None)


_keys = st.sampled_from(["a", "b", "app.kubernetes.io/name"])
_values = st.sampled_from(["", "x", "y", "z-1"])


@given(labels=st.dictionaries(_keys, _values), key=_keys, value=_values.filter(bool), other=_values.filter(bool))
def test_label_selector_property(labels: dict[str, str], key: str, value: str, other: str) -> None:
    """Each operator means what labels.Parse says it means."""
    have = labels.get(key)
    assert parse_label_selector(f"{key}={value}").matches(labels) == (have == value)
    assert parse_label_selector(f"{key}!={value}").matches(labels) == (have != value)
    assert parse_label_selector(f"{key} in ({value},{other})").matches(labels) == (have in (value, other))
    assert parse_label_selector(f"{key} notin ({value},{other})").matches(labels) == (have not in (value, other))
    assert parse_label_selector(key).matches(labels) == (key in labels)
    assert parse_label_selector(f"!{key}").matches(labels) == (key not in labels)


def test_field_selector_parsing() -> None:
    terms = parse_field_selector(r"metadata.name=a\,b,type!=x\=y,type==z,")
    assert [(t.field, t.op, t.value) for t in terms] == [
        ("metadata.name", "=", "a,b"),
        ("type", "!=", "x=y"),
        ("type", "=", "z"),
    ]
    assert parse_field_selector("") == ()
    with pytest.raises(SelectorError, match="can't understand 'nonsense'"):
        parse_field_selector("nonsense")


def test_mem_selector_errors(mem: Mem) -> None:
    code, _, body = mem.request("GET", "/api/v1/secrets?fieldSelector=data.k%3Dv")
    assert (code, body["reason"], body["message"]) == (400, "BadRequest", "field label not supported: data.k")
    code, _, body = mem.request("GET", "/api/v1/secrets?labelSelector=a%20in%20(b")
    assert (code, body["reason"]) == (400, "BadRequest")
    code, _, body = mem.request("GET", "/api/v1/secrets?fieldSelector=foo")
    assert body["message"] == "invalid selector: 'foo'; can't understand 'foo'"


def test_mem_validation_messages(mem: Mem) -> None:
    path = "/api/v1/namespaces/default/secrets"
    long_name = "a" * 254
    code, _, body = mem.request("POST", path, {"metadata": {"name": long_name}})
    assert code == 422
    assert [c["message"] for c in body["details"]["causes"]] == [
        f'Invalid value: "{long_name}": must be no more than 253 characters'
    ]
    code, _, body = mem.request(
        "POST", path, {"metadata": {"name": "ok", "labels": {"bad key": "v", "k": "bad value"}}}
    )
    assert code == 422
    assert [(c["field"], c["message"].split(":")[1].strip()) for c in body["details"]["causes"]] == [
        ("metadata.labels", '"bad key"'),
        ("metadata.labels", '"bad value"'),
    ]
    code, _, body = mem.request("POST", path, {"metadata": {"name": "ok"}, "data": {"..x": "", ".": ""}})
    assert sorted(c["message"] for c in body["details"]["causes"]) == [
        "Invalid value: \".\": must not be '.'",
        "Invalid value: \"..x\": must not start with '..'",
    ]
    code, _, body = mem.request("POST", path, {"metadata": {"name": "tls"}, "type": "kubernetes.io/tls"})
    assert [(c["field"], c["reason"]) for c in body["details"]["causes"]] == [
        ("data[tls.crt]", "FieldValueRequired"),
        ("data[tls.key]", "FieldValueRequired"),
    ]
    code, _, body = mem.request("POST", path, {"kind": "ConfigMap", "metadata": {"name": "x"}})
    assert (code, body["reason"]) == (400, "BadRequest")
    code, _, body = mem.request("POST", path, {"apiVersion": "v2", "metadata": {"name": "x"}})
    assert (code, body["reason"]) == (400, "BadRequest")
    code, _, body = mem.request("POST", path, {"metadata": {"name": "x", "resourceVersion": "5"}})
    assert (code, "reason" in body, body["message"]) == (
        500,
        False,
        "resourceVersion should not be set on objects to be created",
    )
    assert mem.fake.secrets() == []


def test_mem_size_limit_is_exact(mem: Mem) -> None:
    """1 MiB of data values is allowed, one byte more is not."""
    exact = base64.b64encode(b"x" * (1048576 - 1)).decode()
    mem.create("exact", data={"a": exact, "b": b64("y")})
    code, _, body = mem.request(
        "POST",
        "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "over"}, "data": {"a": exact, "b": b64("yz")}},
    )
    assert code == 422
    assert body["message"] == 'Secret "over" is invalid: data: Too long: must have at most 1048576 bytes'


def test_mem_field_validation_modes(mem: Mem) -> None:
    path = "/api/v1/namespaces/default/secrets"
    code, headers, _ = mem.request("POST", path, {"metadata": {"name": "w"}, "spec": {}})
    assert code == 201
    assert headers.getRawHeaders("warning") == ['299 - "unknown field \\"spec\\""']
    code, _, body = mem.request("POST", path + "?fieldValidation=Strict", {"metadata": {"name": "s"}, "spec": {}})
    assert (code, body["message"]) == (400, 'strict decoding error: unknown field "spec"')


def test_mem_yaml_body(mem: Mem) -> None:
    code, _, body = mem.request(
        "POST",
        "/api/v1/namespaces/default/secrets",
        b"metadata:\n  name: from-yaml\nstringData:\n  k: v\n",
        content_type="application/yaml",
    )
    assert (code, body["data"]) == (201, {"k": "dg=="})


def test_mem_patches(mem: Mem) -> None:
    mem.create("p", stringData={"a": "1"}, metadata={"name": "p", "labels": {"x": "1"}})
    path = "/api/v1/namespaces/default/secrets/p"
    code, _, body = mem.request(
        "PATCH",
        path,
        [{"op": "add", "path": "/metadata/labels/y", "value": "2"}, {"op": "remove", "path": "/data/a"}],
        content_type="application/json-patch+json",
    )
    assert code == 200
    assert body["metadata"]["labels"] == {"x": "1", "y": "2"}
    assert "data" not in body
    code, _, body = mem.request(
        "PATCH", path, {"metadata": {"labels": {"x": None}}}, content_type="application/strategic-merge-patch+json"
    )
    assert body["metadata"]["labels"] == {"y": "2"}
    code, _, body = mem.request(
        "PATCH", path, [{"op": "test", "path": "/type", "value": "nope"}], content_type="application/json-patch+json"
    )
    assert (code, body["reason"]) == (422, "Invalid")
    code, _, body = mem.request("PATCH", path, {}, content_type="application/apply-patch+yaml")
    assert (code, body["reason"]) == (415, "UnsupportedMediaType")
    code, _, body = mem.request(
        "PATCH", path, {"metadata": {"resourceVersion": "1"}}, content_type="application/merge-patch+json"
    )
    assert (code, body["reason"]) == (409, "Conflict")
    code, _, body = mem.request(
        "PATCH", "/api/v1/namespaces/default/secrets/none", {}, content_type="application/merge-patch+json"
    )
    assert (code, body["reason"]) == (404, "NotFound")


def test_mem_update_rules(mem: Mem) -> None:
    created = mem.create("u", immutable=True, stringData={"k": "v"})
    path = "/api/v1/namespaces/default/secrets/u"
    changed = dict(created, data={"k": "eA=="})
    code, _, body = mem.request("PUT", path, changed)
    assert code == 422
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueForbidden",
            "message": "Forbidden: field is immutable when `immutable` is set",
            "field": "data",
        }
    ]
    renamed = dict(created, metadata=dict(created["metadata"], name="other"))
    code, _, body = mem.request("PUT", path, renamed)
    assert (code, body["message"]) == (400, "the name of the object (other) does not match the name on the URL (u)")
    wrong_uid = dict(created, metadata=dict(created["metadata"], uid="x"))
    code, _, body = mem.request("PUT", path, wrong_uid)
    assert (code, body["reason"]) == (409, "Conflict")
    assert "Precondition failed: UID in precondition: x" in body["message"]


def test_mem_delete_preconditions(mem: Mem) -> None:
    created = mem.create("d")
    path = "/api/v1/namespaces/default/secrets/d"
    code, _, body = mem.request("DELETE", path, {"preconditions": {"resourceVersion": "1"}})
    assert (code, body["reason"]) == (409, "Conflict")
    code, _, body = mem.request("DELETE", path, {"preconditions": {"uid": created["metadata"]["uid"]}})
    assert (code, body["status"]) == (200, "Success")


def test_mem_dry_run(mem: Mem) -> None:
    code, _, body = mem.request("POST", "/api/v1/namespaces/default/secrets?dryRun=All", {"metadata": {"name": "dry"}})
    assert code == 201
    assert body["metadata"]["name"] == "dry"
    assert mem.fake.secrets() == []
    code, _, body = mem.request("POST", "/api/v1/namespaces/default/secrets?dryRun=Bogus", {"metadata": {"name": "d"}})
    assert (code, body["reason"]) == (400, "BadRequest")


def test_mem_pagination(mem: Mem) -> None:
    for name in ("a", "b", "c", "d", "e"):
        mem.create(name)
    seen = []
    path = "/api/v1/namespaces/default/secrets?limit=2"
    pages = 0
    while True:
        code, _, page = mem.request("GET", path)
        assert code == 200
        pages += 1
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] == 5 - len(seen)
        path = f"/api/v1/namespaces/default/secrets?limit=2&continue={token}"
    assert (seen, pages) == (["a", "b", "c", "d", "e"], 3)
    code, _, body = mem.request("GET", "/api/v1/namespaces/default/secrets?continue=garbage")
    assert (code, body["reason"]) == (400, "BadRequest")


def test_mem_table(mem: Mem) -> None:
    mem.create("t1", type=BUILD_TYPE, stringData={"a": "1", "b": "2"})
    mem.clock.advance(3 * 60 + 5)
    _, _, table = mem.request(
        "GET",
        "/api/v1/namespaces/default/secrets",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Type", "Data", "Age"]
    assert [r["cells"] for r in table["rows"]] == [["t1", BUILD_TYPE, 2, "3m5s"]]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_human_duration() -> None:
    assert [human_duration(s) for s in (0, 119, 120, 600, 3 * 3600, 5 * 3600 + 60, 30 * 3600, 3 * 86400)] == [
        "0s",
        "119s",
        "2m",
        "10m",
        "3h",
        "5h1m",
        "30h",
        "3d",
    ]


def test_mem_faults_and_counters(mem: Mem) -> None:
    """C{fail_with} answers every request; counters show nothing got through."""
    mem.fake.fail_with(503, retry_after=3)
    code, headers, body = mem.request("POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "f"}})
    assert code == 503
    assert headers.getRawHeaders("retry-after") == ["3"]
    assert body["reason"] == "ServiceUnavailable"
    assert body["details"] == {"retryAfterSeconds": 3}
    code, _, body = mem.request("GET", "/version")
    assert code == 503
    mem.fake.fail_with(429)
    code, headers, body = mem.request("GET", "/api/v1/secrets")
    assert (code, body["reason"], headers.getRawHeaders("retry-after")) == (429, "TooManyRequests", None)
    mem.fake.fail_with(500, verbs=["create"])
    assert mem.request("GET", "/api/v1/secrets")[0] == 200
    assert mem.request("POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "f"}})[0] == 500
    mem.fake.fail_with(None)
    assert mem.fake.faults == []
    mem.create("f")
    assert mem.fake.count(verb="create") == 3
    assert mem.fake.count(method="POST", kind="secrets") == 3
    assert mem.fake.request_counts[("GET", "secrets")] == 2
    assert [s["metadata"]["name"] for s in mem.fake.secrets()] == ["f"]


def test_mem_custom_fault(mem: Mem) -> None:
    """Faults are plain callables, consulted in order, and may keep state."""
    from tests.kubeapi import APICall, FaultResponse, status_failure

    calls = []

    def once(call: APICall) -> FaultResponse | None:
        calls.append(call)
        if len(calls) == 1:
            return FaultResponse(504, status_failure(504, "Timeout", "slow"))
        return None

    mem.fake.faults.append(once)
    assert mem.request("GET", "/api/v1/namespaces/default/secrets/x")[0] == 504
    assert mem.request("GET", "/api/v1/namespaces/default/secrets/x")[0] == 404
    assert [(c.verb, c.name) for c in calls] == [("get", "x"), ("get", "x")]


def test_mem_put_secret_seeds(mem: Mem) -> None:
    stored = mem.fake.put_secret("new-ns", {"metadata": {"name": "project"}, "stringData": {"k": "v"}})
    assert stored["metadata"]["namespace"] == "new-ns"
    assert "new-ns" in mem.fake.namespaces()
    assert mem.request("GET", "/api/v1/namespaces/new-ns/secrets/project")[2] == stored
    with pytest.raises(KubeError):
        mem.fake.put_secret("default", {"metadata": {"name": "Bad"}})
    assert mem.fake.delete_secret("new-ns", "project")
    assert not mem.fake.delete_secret("new-ns", "project")


def test_mem_watch_initial_and_live(mem: Mem) -> None:
    mem.create("old")
    response, chunks, finished = mem.watch("/api/v1/namespaces/default/secrets?watch=true&timeoutSeconds=30")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert events_of(chunks) == [("ADDED", "old")]
    created = mem.create("new")
    mem.create("elsewhere", namespace="other")
    mem.request("PUT", "/api/v1/namespaces/default/secrets/new", dict(created, data={"k": "dg=="}))
    mem.request("DELETE", "/api/v1/namespaces/default/secrets/old")
    mem.stub.flush()
    assert events_of(chunks) == [("ADDED", "old"), ("ADDED", "new"), ("MODIFIED", "new"), ("DELETED", "old")]
    deleted = json.loads(b"".join(chunks).splitlines()[-1])["object"]
    assert deleted["metadata"]["resourceVersion"] == str(mem.fake.resource_version)
    assert mem.fake.active_watches == 1
    assert finished == []
    mem.clock.advance(29)
    mem.stub.flush()
    assert finished == []
    mem.clock.advance(1)
    mem.stub.flush()
    assert finished == [None]
    assert mem.fake.active_watches == 0


def test_mem_watch_all_namespaces_and_resume(mem: Mem) -> None:
    a = mem.create("a")
    mem.create("b", namespace="other")
    mem.create("c")
    rv = a["metadata"]["resourceVersion"]
    _, chunks, _ = mem.watch(f"/api/v1/secrets?watch=1&resourceVersion={rv}&fieldSelector=metadata.name!%3Dc")
    assert events_of(chunks) == [("ADDED", "b")]
    _, chunks, _ = mem.watch(f"/api/v1/watch/namespaces/default/secrets?resourceVersion={rv}")
    assert events_of(chunks) == [("ADDED", "c")]
    mem.fake.close_watches()
    assert mem.fake.active_watches == 0


def test_mem_watch_history_expired() -> None:
    clock = Clock()
    fake = FakeKube(clock=clock, history_limit=3)
    mem = Mem(fake, clock, StubTreq(fake.resource()))
    for name in "abcde":
        mem.create(name)
    floor = fake.resource_version - 3
    _, chunks, finished = mem.watch(f"/api/v1/secrets?watch=true&resourceVersion={floor - 1}")
    assert events_of(chunks) == [
        (
            "ERROR",
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {floor - 1} ({floor})",
                "reason": "Expired",
                "code": 410,
            },
        )
    ]
    assert finished == [None]
    _, chunks, finished = mem.watch(f"/api/v1/secrets?watch=true&resourceVersion={floor}")
    assert events_of(chunks) == [("ADDED", "c"), ("ADDED", "d"), ("ADDED", "e")]
    assert finished == []
    fake.close_watches()


def raw_events(chunks: list[bytes]) -> list[Any]:
    return [json.loads(line) for line in b"".join(chunks).splitlines()]


def test_mem_watch_bookmarks(mem: Mem) -> None:
    """
    With allowWatchBookmarks a watch gets a BOOKMARK at the current
    resourceVersion on demand and as it times out; without it, none.
    """
    _, plain, plain_done = mem.watch("/api/v1/namespaces/default/secrets?watch=1&timeoutSeconds=10")
    _, chunks, finished = mem.watch(
        "/api/v1/namespaces/default/secrets?watch=1&allowWatchBookmarks=true&timeoutSeconds=10"
    )
    mem.create("elsewhere", namespace="other")
    assert mem.fake.send_bookmarks() == 1
    mem.stub.flush()
    bookmark = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(mem.fake.resource_version), "creationTimestamp": None},
    }
    assert raw_events(chunks) == [{"type": "BOOKMARK", "object": bookmark}]
    mem.create("later", namespace="other")
    mem.clock.advance(10)
    mem.stub.flush()
    later = dict(bookmark, metadata={"resourceVersion": str(mem.fake.resource_version), "creationTimestamp": None})
    assert raw_events(chunks) == [{"type": "BOOKMARK", "object": bookmark}, {"type": "BOOKMARK", "object": later}]
    assert finished == [None]
    assert plain == [] and plain_done == [None]


def test_mem_calls_record_query(mem: Mem) -> None:
    """Each recorded call carries its decoded query parameters."""
    mem.request("GET", "/api/v1/namespaces/default/secrets?fieldSelector=type%3Dbrigade.sh%2Fproject&limit=5")
    assert mem.fake.calls[-1].query == {"fieldSelector": "type=brigade.sh/project", "limit": "5"}
    assert mem.fake.calls[-1].verb == "list"


def test_mem_watch_namespaces_not_supported(mem: Mem) -> None:
    code, _, body = mem.request("GET", "/api/v1/namespaces?watch=true")
    assert (code, body["reason"]) == (405, "MethodNotAllowed")


# ---------------------------------------------------------------------------
# In the reactor: served over TLS
# ---------------------------------------------------------------------------


def _tls_client(served: Any, client_cert: bool = False) -> Any:
    from twisted.internet import reactor, ssl
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    with open(served.ca_path, "rb") as f:
        ca = ssl.Certificate.loadPEM(f.read())
    certificate = None
    if client_cert:
        with open(served.pki.client_cert, "rb") as c, open(served.pki.client_key, "rb") as k:
            certificate = ssl.PrivateCertificate.loadPEM(c.read() + k.read())

    @implementer(IPolicyForHTTPS)
    class Policy:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            return ssl.optionsForClientTLS(hostname.decode(), trustRoot=ca, clientCertificate=certificate)

    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=Policy(), pool=pool))


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")  # Twisted's client-certificate options
@pytest_twisted.ensureDeferred
async def test_served_tls_auth(served_fake_kube: tuple[FakeKube, Any]) -> None:
    _, served = served_fake_kube
    assert served.url.startswith("https://127.0.0.1:")
    http = _tls_client(served)
    path = served.url + "/api/v1/namespaces/default/secrets"
    response = await http.get(path, headers={"Authorization": "Bearer test-token"})
    assert response.code == 200
    assert (await response.json())["kind"] == "SecretList"
    response = await http.get(path)
    assert response.code == 401
    await response.content()
    response = await _tls_client(served, client_cert=True).get(path)
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_served_watch_released_on_disconnect(served_fake_kube: tuple[FakeKube, Any]) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import deferLater

    fake, served = served_fake_kube
    fake.put_secret("default", {"metadata": {"name": "w"}})
    response = await _tls_client(served).get(
        served.url + "/api/v1/namespaces/default/secrets?watch=true",
        headers={"Authorization": "Bearer test-token"},
    )
    assert response.code == 200
    received: list[bytes] = []

    class Body(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    body = Body()
    response.deliverBody(body)
    deadline = time.monotonic() + T
    while not received and time.monotonic() < deadline:
        await deferLater(reactor, 0.02, lambda: None)
    assert json.loads(b"".join(received))["type"] == "ADDED"
    assert fake.active_watches == 1
    transport: Any = body.transport  # a TLS transport: an IProducer too
    transport.stopProducing()  # the client goes away
    while fake.active_watches and time.monotonic() < deadline:
        await deferLater(reactor, 0.02, lambda: None)
    assert fake.active_watches == 0
