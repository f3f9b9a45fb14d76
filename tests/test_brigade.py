"""The Brigade v1 wire contract: project IDs, ULIDs, project and build Secrets."""

from __future__ import annotations

import base64
from typing import Any, cast

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brigade_cr.core.contract import (
    BUILD_DATA_KEYS,
    build_secret,
    decode_ulid_time,
    encode_ulid,
    is_ulid,
    project_from_secret,
    project_id,
    same_build,
    secret_data,
)
from brigade_cr.core.errors import ProjectNotFound
from brigade_cr.core.values import Build


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("deis/empty-testbed", "brigade-830c16d4aaf6f5490937ad719afd8490a5bcbef064d397411043ac"),
        ("brigadecore/empty-testbed", "brigade-4897c99315be5d2a2403ea33bdcb24f8116dc69613d5917d879d5f"),
        ("myproject", "brigade-9a76b440a0db5ffd45f655871fe955a3f7a2de2506333e71709d06"),
    ],
)
def test_project_id_matches_brig(name: str, expected: str) -> None:
    """Project names hash to the IDs the contract lists, 62 characters long."""
    assert project_id(name) == expected
    assert len(expected) == 62


def test_project_id_passthrough() -> None:
    """A name that starts with brigade- is already an ID and is used as is."""
    assert project_id("brigade-abc") == "brigade-abc"


def test_project_id_is_case_sensitive() -> None:
    """No normalisation: case changes the ID."""
    assert project_id("MyProject") != project_id("myproject")


def test_ulid_known_value() -> None:
    """The all-zero and all-one ULIDs encode as Crockford base32, lower case."""
    assert encode_ulid(0, bytes(10)) == "0" * 26
    assert encode_ulid((1 << 48) - 1, b"\xff" * 10) == "7zzzzzzzzzzzzzzzzzzzzzzzzz"


def test_ulid_timestamp_prefix() -> None:
    """A ULID's first ten characters are its millisecond timestamp."""
    # 1469918176385 ms is the ULID specification's example, 01ARYZ6S41.
    assert encode_ulid(1469918176385, bytes(10))[:10] == "01aryz6s41"


@given(st.integers(0, (1 << 48) - 1), st.binary(min_size=10, max_size=10))
def test_ulid_round_trip(milliseconds: int, randomness: bytes) -> None:
    """Every timestamp and randomness encodes to a valid ULID that decodes back."""
    ulid = encode_ulid(milliseconds, randomness)
    assert is_ulid(ulid)
    assert ulid == ulid.lower()
    assert decode_ulid_time(ulid) == milliseconds


def test_ulid_refuses_bad_input() -> None:
    """Out-of-range timestamps and wrong-sized randomness are refused."""
    with pytest.raises(ValueError):
        encode_ulid(1 << 48, bytes(10))
    with pytest.raises(ValueError):
        encode_ulid(0, bytes(9))


def _project(**extra: object) -> dict[str, object]:
    secret: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "brigade.sh/project",
        "metadata": {
            "name": project_id("acme/webapp"),
            "labels": {"app": "brigade", "component": "project", "heritage": "brigade"},
            "annotations": {"projectName": "acme/webapp"},
        },
        "data": {
            "repository": base64.b64encode(b"github.com/acme/webapp").decode(),
            "cloneURL": base64.b64encode(b"https://github.com/acme/webapp.git").decode(),
            "crGatewaySecret": base64.b64encode(b"s3cret").decode(),
            "sshKey": base64.b64encode(b"-----BEGIN KEY-----").decode(),
        },
    }
    secret.update(extra)
    return secret


def test_project_from_secret() -> None:
    """A project Secret yields its ID, name, repository, clone URL and gateway secret."""
    project = project_from_secret(_project())
    assert project.id == project_id("acme/webapp")
    assert project.name == "acme/webapp"
    assert project.repository == "github.com/acme/webapp"
    assert project.clone_url == "https://github.com/acme/webapp.git"
    assert project.cr_gateway_secret == b"s3cret"
    assert "s3cret" not in repr(project)


@pytest.mark.parametrize("kind", ["brigade.sh/build", "Opaque", None])
def test_non_project_secret_is_not_a_project(kind: str | None) -> None:
    """A brigade-* Secret of any other type is not a project."""
    with pytest.raises(ProjectNotFound):
        project_from_secret(_project(type=kind))


def test_project_string_data() -> None:
    """stringData in a manifest counts, as the API server would merge it."""
    secret = _project(stringData={"crGatewaySecret": "plain"})
    assert project_from_secret(secret).cr_gateway_secret == b"plain"


def test_secret_data_refuses_bad_base64() -> None:
    """Data that is not base64 is an error, not garbage."""
    with pytest.raises(ValueError):
        secret_data({"data": {"k": "***"}})


BUILD = Build(
    project_id="brigade-830c16d4aaf6f5490937ad719afd8490a5bcbef064d397411043ac",
    ulid="01jgq8w4h0aaaaaaaaaaaaaaaa",
    event_type="image_push",
    event_provider="dockerhub",
    commit_ref="master",
    payload=b'{"a": "\xc3\xa9"}\n',
    short_title="image_push docker.io/acme/webapp:v1",
    long_title="dockerhub image_push: docker.io/acme/webapp:v1",
)


def test_build_secret_shape() -> None:
    """The build Secret is exactly the contract's: type, name, labels, every data key."""
    secret = build_secret(BUILD, "brigade")
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["type"] == "brigade.sh/build"
    assert secret["metadata"] == {
        "name": "brigade-worker-01jgq8w4h0aaaaaaaaaaaaaaaa",
        "namespace": "brigade",
        "labels": {
            "heritage": "brigade",
            "component": "build",
            "build": "01jgq8w4h0aaaaaaaaaaaaaaaa",
            "project": BUILD.project_id,
        },
    }
    assert list(secret["data"]) == list(BUILD_DATA_KEYS)
    decoded = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert decoded == {
        "build_id": b"brigade-worker-01jgq8w4h0aaaaaaaaaaaaaaaa",
        "build_name": b"brigade-worker-01jgq8w4h0aaaaaaaaaaaaaaaa",
        "event_type": b"image_push",
        "event_provider": b"dockerhub",
        "project_id": BUILD.project_id.encode(),
        "commit_id": b"",
        "commit_ref": b"master",
        "clone_url": b"",
        "short_title": b"image_push docker.io/acme/webapp:v1",
        "long_title": b"dockerhub image_push: docker.io/acme/webapp:v1",
        "log_level": b"",
        "payload": b'{"a": "\xc3\xa9"}\n',
        "script": b"",
        "config": b"",
    }
    assert "status" not in secret["metadata"]["labels"]


def test_same_build() -> None:
    """A Secret is the same build when it stands for the same event; payload and titles do not matter."""
    secret = build_secret(BUILD, "default")
    assert same_build(secret, BUILD)
    assert same_build(build_secret(attrs.evolve(BUILD, payload=b"{}", short_title="x"), "default"), BUILD)
    for change in (
        {"event_type": "image_delete"},
        {"event_provider": "acr"},
        {"commit_ref": "main"},
        {"project_id": "brigade-other"},
        {"ulid": "01jgq8w4h0bbbbbbbbbbbbbbbb"},
    ):
        evolved = attrs.evolve(BUILD, **cast(dict[str, Any], change))
        assert not same_build(build_secret(evolved, "default"), BUILD), change
    assert not same_build({**secret, "type": "Opaque"}, BUILD)
    assert not same_build({**secret, "data": {"payload": "***"}}, BUILD)
