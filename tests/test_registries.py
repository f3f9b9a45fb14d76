"""Docker Hub, ACR and generic payload formats, and recognition between them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import Delivery, RegistryEvent
from brigade_cr.registries import FORMATS, ACRFormat, DockerHubFormat, GenericFormat, recognise
from brigade_cr.registries._common import artifact_class, parse_time

PAYLOADS = Path(__file__).parent / "payloads"
RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return document


def parse(name: str, headers: dict[str, str] | None = None) -> tuple[str, list[RegistryEvent]]:
    document = load(name)
    delivery = Delivery("p", "", (PAYLOADS / name).read_bytes(), RECEIVED, headers or {})
    sender = recognise(headers or {}, document)
    return sender.name, list(sender.parse(delivery, document))


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_provide_the_interface(fmt: IPayloadFormat) -> None:
    """Every format implements IPayloadFormat."""
    assert verifyObject(IPayloadFormat, fmt)


def test_generic_is_last() -> None:
    """The catch-all generic format is tried last."""
    assert FORMATS[-1].name == "generic"


def test_dockerhub_push() -> None:
    """A Docker Hub push is a tagged image push on docker.io with no digest."""
    name, events = parse("dockerhub_push.json")
    assert name == "dockerhub"
    assert events == [
        RegistryEvent(
            registry="dockerhub",
            action="push",
            time=datetime(2026, 1, 1, tzinfo=timezone.utc),
            host="docker.io",
            repository="acme/webapp",
            tag="v1.4.2",
            artifact_class="unknown",
            actor="acme-ci",
        )
    ]


def test_dockerhub_float_time_and_missing_tag() -> None:
    """pushed_at may be a float; a push without a tag is ignored, not 'latest'."""
    document = {"push_data": {"pushed_at": 1.417566161e09}, "repository": {"repo_name": "a/b"}}
    delivery = Delivery("p", "", b"{}", RECEIVED)
    [event] = DockerHubFormat().parse(delivery, document)
    assert event.action == "ignored"
    assert event.reason == "untagged"
    assert event.tag is None
    assert event.time == datetime(2014, 12, 3, 0, 22, 41, tzinfo=timezone.utc)


def test_dockerhub_callback_url_is_never_read() -> None:
    """The dead callback_url capability appears nowhere in the parsed event."""
    _, [event] = parse("dockerhub_push.json")
    assert "hook" not in repr(event)


@pytest.mark.parametrize(
    ("sample", "action", "tag", "artifact"),
    [
        ("acr_push.json", "push", "v1.4.2", "image"),
        ("acr_delete.json", "delete", None, "image"),
        ("acr_chart_push.json", "push", "webapp-0.3.1.tgz", "chart"),
        ("acr_chart_delete.json", "delete", "webapp-0.3.1.tgz", "chart"),
        ("acr_quarantine.json", "quarantine", "v1.4.3", "image"),
        ("acr_ping.json", "ping", None, "unknown"),
    ],
)
def test_acr_actions(sample: str, action: str, tag: str | None, artifact: str) -> None:
    """Each ACR action maps to its normalised action and artifact class."""
    name, [event] = parse(sample)
    assert name == "acr"
    assert (event.action, event.tag, event.artifact_class) == (action, tag, artifact)
    assert event.event_id == "acr:" + load(sample)["id"]
    assert event.event_id_source == "sender"


def test_acr_push_fields() -> None:
    """An ACR push carries host, repository, digest, media type and nanosecond time."""
    _, [event] = parse("acr_push.json")
    assert event.host == "acmeregistry.azurecr.io"
    assert event.repository == "team/webapp"
    assert event.digest == "sha256:9f74e4efee8db5b6f712ce92b9d23d665400532944ca73333d6d5db561268006"
    assert event.media_type == "application/vnd.oci.image.index.v1+json"
    assert event.time == datetime(2026, 1, 5, 10, 15, 30, 123456, tzinfo=timezone.utc)


def test_acr_untagged_push_is_ignored() -> None:
    """A digest-only ACR push is not a build."""
    document = load("acr_push.json")
    del document["target"]["tag"]
    [event] = ACRFormat().parse(Delivery("p", "", b"{}", RECEIVED), document)
    assert (event.action, event.reason) == ("ignored", "untagged")


def test_acr_unknown_action_is_ignored() -> None:
    """An action ACR may add later is ignored with a reason, not built."""
    document = {**load("acr_push.json"), "action": "import"}
    [event] = ACRFormat().parse(Delivery("p", "", b"{}", RECEIVED), document)
    assert (event.action, event.reason) == ("ignored", "unknown action")


def test_acr_recognised_by_user_agent() -> None:
    """ACR's observed user agent identifies it even for an odd body."""
    assert recognise({"user-agent": "AzureContainerRegistry/1.0"}, {"x": 1}).name == "acr"


def test_acr_without_action_is_bad_request() -> None:
    """A body recognised as ACR only by its user agent, lacking an action, is refused."""
    with pytest.raises(BadRequest):
        ACRFormat().parse(Delivery("p", "", b"{}", RECEIVED), {"x": 1})


@pytest.mark.parametrize(
    "document",
    [{}, {"events": []}, {"push_data": {}}, {"repository": {"repo_name": "a/b"}}, {"id": "x", "action": "push"}],
)
def test_everything_else_is_generic(document: dict[str, Any]) -> None:
    """Objects no format claims fall to generic, an image_push with nothing known."""
    sender = recognise({}, document)
    assert sender.name == "generic"
    [event] = sender.parse(Delivery("p", "", b"{}", RECEIVED), document)
    assert event == RegistryEvent(registry="generic", action="push", time=RECEIVED)


def test_recognition_of_every_sample() -> None:
    """Every sample (with its sidecar headers) is recognised as the format its file name says."""
    for path in sorted(PAYLOADS.glob("*.json")):
        if path.name.endswith(".headers.json"):
            continue
        sidecar = path.with_name(path.name.replace(".json", ".headers.json"))
        headers = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        assert recognise(headers, load(path.name)).name == path.name.split("_")[0], path.name


@pytest.mark.parametrize(
    ("media_type", "config_type", "expected"),
    [
        ("application/vnd.docker.distribution.manifest.v2+json", None, "image"),
        ("application/vnd.oci.image.index.v1+json", None, "image"),
        ("application/vnd.acr.helm.chart", None, "chart"),
        ("application/vnd.oci.image.manifest.v1+json", "application/vnd.cncf.helm.config.v1+json", "chart"),
        ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.config.v1+json", "image"),
        ("application/vnd.oci.image.manifest.v1+json", "application/vnd.dev.cosign.artifact.sig.v1+json", "other"),
        ("application/vnd.oci.image.manifest.v1+json", None, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_artifact_class(media_type: str | None, config_type: str | None, expected: str) -> None:
    """Media types decide the artifact class as docs/registries.md section 3 says."""
    assert artifact_class(media_type, config_type) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1767225600, datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("2026-01-05T10:15:30.123456789Z", datetime(2026, 1, 5, 10, 15, 30, 123456, tzinfo=timezone.utc)),
        ("2026-01-05T05:00:00.000+0000", datetime(2026, 1, 5, 5, tzinfo=timezone.utc)),
        ("2026-01-05T07:00:00+02:00", datetime(2026, 1, 5, 5, tzinfo=timezone.utc)),
        ("not a time", RECEIVED),
        (None, RECEIVED),
        (True, RECEIVED),
        (10**30, RECEIVED),
        ("2026-13-45T99:00:00Z", RECEIVED),
    ],
)
def test_parse_time(value: object, expected: datetime) -> None:
    """Times normalise to UTC; unreadable ones fall back to the receive time."""
    assert parse_time(value, RECEIVED) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(),
        "timestamp": json_values,
        "action": st.sampled_from(["push", "delete", "ping", "chart_push", "quarantine", "x"]) | json_values,
        "target": st.dictionaries(st.sampled_from(["tag", "digest", "repository", "mediaType"]), json_values),
        "request": json_values,
        "push_data": st.dictionaries(st.sampled_from(["tag", "pushed_at", "pusher", "media_type"]), json_values),
        "repository": st.dictionaries(st.sampled_from(["repo_name", "name"]), json_values),
    },
)


@given(shaped, st.sampled_from([{}, {"user-agent": "AzureContainerRegistry/1.0"}]))
def test_parsers_never_crash(document: dict[str, Any], headers: dict[str, str]) -> None:
    """Any object goes to some format whose parser returns events or raises BadRequest."""
    sender = recognise(headers, document)
    try:
        events = sender.parse(Delivery("p", "", b"{}", RECEIVED, headers), document)
    except BadRequest:
        return
    assert len(events) >= 1
    for event in events:
        assert event.registry == sender.name
        assert event.time.tzinfo is not None
        assert event.tag is None or (isinstance(event.tag, str) and event.tag)


def test_generic_format_name() -> None:
    """The fallback reports provider generic."""
    assert GenericFormat().name == "generic"
