"""
Parsers keep to the OCI grammar: every tag and repository in a
``RegistryEvent`` is in the distribution spec's grammar or None, and an event
whose tag or repository is not is ignored with the reason ``invalid tag`` or
``invalid repository`` (never built).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any, Callable

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brigade_cr.core.grammar import MAX_REPOSITORY, REPOSITORY, TAG, is_repository, is_tag
from brigade_cr.core.values import Delivery, RegistryEvent
from brigade_cr.registries import FORMATS, recognise
from brigade_cr.registries._common import (
    INVALID_REPOSITORY,
    INVALID_TAG,
    evolve_event,
    is_signature,
    make_event,
    outcome,
)

RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
DIGEST = "sha256:" + "c" * 64
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
BY_NAME = {fmt.name: fmt for fmt in FORMATS}

valid_repositories = st.sampled_from(["acme/webapp", "library/busybox", "a", "a.b/c__d/e-f", "x" * MAX_REPOSITORY]) | (
    st.from_regex(REPOSITORY, fullmatch=True).filter(lambda value: len(value) <= MAX_REPOSITORY)
)
# Invalid names that stay one path in a reference (no ":", "@"), so that
# formats reading a repository from a reference see it whole.
invalid_plain_repositories = st.sampled_from(
    [
        "Acme/WebApp",
        "acme//webapp",
        "-acme/webapp",
        "acme/webapp-",
        "acme/web app",
        "acme/wébapp",
        "acme/.webapp",
        "acme/web..app",
        "x" * (MAX_REPOSITORY + 1),
    ]
) | st.text(alphabet="aA-._/ é\t", min_size=1, max_size=12).filter(
    # A reference is read stripped of surrounding blanks and slashes.
    lambda value: not is_repository(value) and value == value.strip().strip("/")
)
# Invalid names that only a field of their own can hold: a host with a port
# inside, a tag or a digest inside, surrounding slashes or blanks.
invalid_repositories = invalid_plain_repositories | st.sampled_from(
    [
        "acme/webapp/",
        " acme/webapp",
        "registry.example.com:5000/acme/webapp",
        "acme/webapp:v1",
        "acme/webapp@" + DIGEST,
        "[::1]:5000/acme",
    ]
)
valid_tags = st.sampled_from(["v1.4.2", "latest", "_", "A" * 128, "1.0-rc.1_x"]) | st.from_regex(
    TAG, fullmatch=True
).filter(lambda value: not is_signature(value))
# Invalid tags that stay a tag in a reference (no "/", ":", "@").
invalid_plain_tags = st.sampled_from(["-v1", ".v1", "v 1", "v1!", "vé", "x" * 129, "v1+build"]) | st.text(
    alphabet="v1-.!é +", min_size=1, max_size=10
).filter(lambda value: not is_tag(value) and value == value.strip())
invalid_tags = invalid_plain_tags | st.sampled_from(["a:b", "a/b", "a@b", "v1\n", " v1"])
hosts = st.sampled_from(["registry.example.com", "harbor.example.com:8443", "localhost:5000", "Bad Host!", ""])
digests = st.sampled_from([DIGEST, "sha256:", "md5:zz", "not a digest"])


def repositories(plain: bool) -> st.SearchStrategy[tuple[str, bool]]:
    """A repository and whether it is valid."""
    invalid = invalid_plain_repositories if plain else invalid_repositories
    return st.tuples(valid_repositories, st.just(True)) | st.tuples(invalid, st.just(False))


def tags(plain: bool) -> st.SearchStrategy[tuple[str, bool]]:
    """A tag and whether it is valid."""
    invalid = invalid_plain_tags if plain else invalid_tags
    return st.tuples(valid_tags, st.just(True)) | st.tuples(invalid, st.just(False))


Document = tuple[dict[str, Any], dict[str, str]]


def _dockerhub(repository: str, tag: str, host: str, digest: str) -> Document:
    return {"push_data": {"tag": tag, "pushed_at": 1767600000}, "repository": {"repo_name": repository}}, {}


def _acr(repository: str, tag: str, host: str, digest: str) -> Document:
    target = {"repository": repository, "tag": tag, "mediaType": MANIFEST, "digest": digest}
    return {
        "id": "e1",
        "timestamp": "2026-01-05T08:30:00Z",
        "action": "push",
        "target": target,
        "request": {"host": host},
    }, {}


def _aliyun(repository: str, tag: str, host: str, digest: str) -> Document:
    return {
        "push_data": {"tag": tag, "digest": digest, "pushed_at": "2026-01-05T08:30:00Z"},
        "repository": {"region": "cn-hangzhou", "repo_full_name": repository},
    }, {}


def _distribution(repository: str, tag: str, host: str, digest: str) -> Document:
    target = {"mediaType": MANIFEST, "repository": repository, "tag": tag, "digest": digest}
    event = {"id": "e1", "action": "push", "target": target, "request": {"host": host}}
    return {"events": [event]}, {"content-type": "application/vnd.docker.distribution.events.v2+json"}


def _ecr(repository: str, tag: str, host: str, digest: str) -> Document:
    detail = {
        "action-type": "PUSH",
        "result": "SUCCESS",
        "repository-name": repository,
        "image-tag": tag,
        "image-digest": digest,
        "manifest-media-type": MANIFEST,
    }
    return {
        "source": "aws.ecr",
        "detail-type": "ECR Image Action",
        "account": "111122223333",
        "region": "eu-west-1",
        "detail": detail,
    }, {}


def _gar(repository: str, tag: str, host: str, digest: str) -> Document:
    data = {"action": "INSERT", "tag": f"europe-west1-docker.pkg.dev/{repository}:{tag}"}
    message = {"data": base64.b64encode(json.dumps(data).encode()).decode(), "messageId": "m1"}
    return {"message": message, "subscription": "projects/p/subscriptions/s"}, {}


def _github(repository: str, tag: str, host: str, digest: str) -> Document:
    version = {
        "package_url": f"ghcr.io/{repository}",
        "created_at": "2026-01-05T08:30:00Z",
        "container_metadata": {"tag": {"name": tag, "digest": digest}, "manifest": {"media_type": MANIFEST}},
    }
    package = {"namespace": "acme", "name": "webapp", "package_type": "CONTAINER", "package_version": version}
    return {"action": "published", "package": package}, {"x-github-event": "package", "x-github-delivery": "d1"}


def _harbor(repository: str, tag: str, host: str, digest: str) -> Document:
    resource = {"tag": tag, "digest": digest, "resource_url": f"{host}/{repository}"}
    data = {"resources": [resource], "repository": {"repo_full_name": repository}}
    return {"type": "PUSH_ARTIFACT", "occur_at": 1767600000, "operator": "u", "event_data": data}, {}


def _jfrog(repository: str, tag: str, host: str, digest: str) -> Document:
    data = {
        "repo_key": "docker-local",
        "image_name": repository,
        "tag": tag,
        "sha256": "a" * 64,
        "name": "manifest.json",
        "image_type": "docker",
    }
    return {"domain": "docker", "event_type": "pushed", "jpd_origin": f"https://{host}", "data": data}, {}


def _nexus(repository: str, tag: str, host: str, digest: str) -> Document:
    component = {"format": "docker", "name": repository, "version": tag}
    return {"action": "CREATED", "timestamp": "2026-01-05T08:30:00Z", "component": component}, {
        "x-nexus-webhook-id": "rm:repository:component",
        "x-nexus-webhook-delivery": "d1",
    }


def _quay(repository: str, tag: str, host: str, digest: str) -> Document:
    return {
        "docker_url": f"{host}/{repository}",
        "repository": repository,
        "updated_tags": [tag],
        "pushed_image_count": 1,
    }, {}


# Each format's push, and whether its repository and tag reach the parser
# through a reference (so only "plain" invalid values keep their meaning).
TEMPLATES: dict[str, tuple[Callable[[str, str, str, str], Document], bool]] = {
    "dockerhub": (_dockerhub, False),
    "acr": (_acr, False),
    "aliyun": (_aliyun, False),
    "distribution": (_distribution, False),
    "ecr": (_ecr, False),
    "gar": (_gar, True),
    "github": (_github, True),
    "harbor": (_harbor, False),
    "jfrog": (_jfrog, False),
    "nexus": (_nexus, False),
    "quay": (_quay, False),
}


def test_every_format_has_a_template() -> None:
    """The property below covers every format but generic (which reports neither tag nor repository)."""
    assert set(TEMPLATES) | {"generic"} == set(BY_NAME)


def parse(name: str, document: dict[str, Any], headers: dict[str, str]) -> list[RegistryEvent]:
    body = json.dumps(document).encode()
    delivery = Delivery("acme/webapp", "", body, RECEIVED, headers)
    chosen = recognise(dict(delivery.headers), document)
    assert chosen.name == name
    return list(chosen.parse(delivery, document))


def check(name: str, repository: tuple[str, bool], tag: tuple[str, bool], host: str, digest: str) -> None:
    template, _ = TEMPLATES[name]
    repo_value, repo_valid = repository
    tag_value, tag_valid = tag
    if name == "github":
        # ghcr.io names are case-insensitive: GitHub's parser lower-cases them.
        repo_valid = is_repository(repo_value.lower())
    if name == "jfrog":
        repo_valid = is_repository(f"docker-local/{repo_value}")
    document, headers = template(repo_value, tag_value, host, digest)
    events = parse(name, document, headers)
    assert len(events) == 1
    [event] = events
    assert event.repository is None or is_repository(event.repository)
    assert event.tag is None or is_tag(event.tag)
    if not repo_valid:
        assert (event.action, event.reason) == ("ignored", INVALID_REPOSITORY)
    elif not tag_valid:
        assert (event.action, event.reason, event.tag) == ("ignored", INVALID_TAG, None)
    else:
        assert (event.action, event.reason, event.tag) == ("push", None, tag_value)
        expected = repo_value.lower() if name == "github" else repo_value
        if name == "jfrog":
            expected = f"docker-local/{repo_value}"
        assert event.repository == expected


def grammar_test(name: str) -> Any:
    plain = TEMPLATES[name][1]

    @given(repositories(plain), tags(plain), hosts, digests)
    def test(repository: tuple[str, bool], tag: tuple[str, bool], host: str, digest: str) -> None:
        check(name, repository, tag, host, digest)

    test.__doc__ = (
        f"{name}: a push's tag and repository reach the event only in the OCI grammar; "
        "otherwise it is ignored as 'invalid repository' (first) or 'invalid tag'."
    )
    return test


test_grammar_dockerhub = grammar_test("dockerhub")
test_grammar_acr = grammar_test("acr")
test_grammar_aliyun = grammar_test("aliyun")
test_grammar_distribution = grammar_test("distribution")
test_grammar_ecr = grammar_test("ecr")
test_grammar_gar = grammar_test("gar")
test_grammar_github = grammar_test("github")
test_grammar_harbor = grammar_test("harbor")
test_grammar_jfrog = grammar_test("jfrog")
test_grammar_nexus = grammar_test("nexus")
test_grammar_quay = grammar_test("quay")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_digest_is_never_a_tag(name: str) -> None:
    """A digest where a tag belongs (the Hypothesis find in Docker Hub) never becomes a tag nor a build:
    it is "untagged", as Harbor's digest-only pushes are. GAR reads a reference, split at its last ":",
    so there the digest's algorithm ends up in the repository, which is then invalid."""
    template, _ = TEMPLATES[name]
    document, headers = template("acme/webapp", "sha256:" + "a" * 64, "registry.example.com", DIGEST)
    [event] = parse(name, document, headers)
    if name == "gar":
        assert (event.action, event.reason, event.repository) == ("ignored", INVALID_REPOSITORY, None)
    else:
        assert (event.action, event.reason, event.tag, event.repository) == (
            "ignored",
            "untagged",
            None,
            "docker-local/acme/webapp" if name == "jfrog" else "acme/webapp",
        )


def test_registry_event_refuses_values_outside_the_grammar() -> None:
    """RegistryEvent itself cannot hold a tag or repository outside the grammar."""
    with pytest.raises(ValueError, match="tag outside the OCI grammar"):
        RegistryEvent(registry="x", action="push", time=RECEIVED, tag="sha256:" + "a" * 64)
    with pytest.raises(ValueError, match="repository outside the OCI grammar"):
        RegistryEvent(registry="x", action="push", time=RECEIVED, repository="Acme/App")
    event = RegistryEvent(registry="x", action="push", time=RECEIVED, repository="acme/app", tag="v1")
    with pytest.raises(ValueError, match="tag outside"):
        attrs.evolve(event, tag="")


def test_make_event_drops_and_reports() -> None:
    """make_event drops an invalid repository or tag and ignores the event with the reason; repository first."""
    both = make_event(registry="x", action="push", time=RECEIVED, repository="A", tag="-t")
    assert (both.action, both.reason, both.repository, both.tag) == ("ignored", INVALID_REPOSITORY, None, None)
    tag = make_event(registry="x", action="delete", time=RECEIVED, repository="a", tag="-t")
    assert (tag.action, tag.reason, tag.repository, tag.tag) == ("ignored", INVALID_TAG, "a", None)
    fine = make_event(registry="x", action="push", time=RECEIVED, repository="a", tag="t")
    assert (fine.action, fine.reason, fine.repository, fine.tag) == ("push", None, "a", "t")


def test_evolve_event_keeps_the_grammar_reason() -> None:
    """An event ignored for its grammar stays so, whatever a later step says of its action."""
    base = make_event(registry="x", action="ignored", time=RECEIVED, repository="Bad")
    later = evolve_event(base, action="push", reason=None, tag="v1")
    assert (later.action, later.reason, later.tag) == ("ignored", INVALID_REPOSITORY, "v1")
    fine = make_event(registry="x", action="ignored", time=RECEIVED, repository="a")
    assert evolve_event(fine, action="push", reason=None, tag="v 1").reason == INVALID_TAG


def test_outcome_of_an_invalid_tag_is_ignored_whatever_the_action() -> None:
    """A delete naming a tag outside the grammar is ignored as 'invalid tag', as a push is."""
    assert outcome("delete", "bad tag", "image") == ("ignored", INVALID_TAG, None, "image")
    assert outcome("push", "bad tag", "image") == ("ignored", INVALID_TAG, None, "image")
