"""
Property-based tests of the whole HTTP surface: random paths, query strings,
headers and bodies through the real Klein app and twisted.web, in memory.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from brigade_cr.gateway import Gateway
from brigade_cr.memory import MemoryBuilds, MemoryProjects
from brigade_cr.ratelimit import RateLimiter
from brigade_cr.web import make_site_resource
from tests.backend_contract import project_secret
from tests.helpers import result_of

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = "fuzz-secret"

segments = st.sampled_from(["solo", "acme", "webapp", "brigade-x", "", "..", "%2F", "events", "webhook"]) | st.text(
    max_size=12
)
paths = st.one_of(
    st.lists(segments, max_size=5).map(lambda parts: "/events/webhook/" + "/".join(quote(p, safe="") for p in parts)),
    st.lists(segments, max_size=4).map(lambda parts: "/" + "/".join(quote(p, safe="") for p in parts)),
    st.just("/healthz"),
)
query_pairs = st.lists(
    st.tuples(st.sampled_from(["commit", "token", "registry", "x", ""]) | st.text(max_size=6), st.text(max_size=20)),
    max_size=4,
)
header_names = st.sampled_from(
    ["User-Agent", "Content-Type", "Authorization", "X-Hub-Signature-256", "X-GitHub-Event", "Expect", "X-Anything"]
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
documents = st.recursive(
    json_leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
bodies = st.one_of(
    st.binary(max_size=300),
    documents.map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"{}", b'{"push_data": {"tag": "v1"}, "repository": {"repo_name": "a/b"}}']),
)
credentials = st.sampled_from(["none", "wrong", "right-token", "right-bearer"])


def harness() -> tuple[StubTreq, MemoryBuilds]:
    projects = MemoryProjects()
    projects.add(project_secret("solo", crGatewaySecret=SECRET.encode()))
    projects.add(project_secret("acme/webapp", crGatewaySecret=SECRET.encode()))
    projects.add(project_secret("open"))
    builds = MemoryBuilds()
    clock = Clock()
    clock.advance(NOW.timestamp())
    gateway = Gateway(
        projects,
        builds,
        clock,
        auth_failures=RateLimiter(clock, per_second=1.0, burst=3),
    )
    return StubTreq(make_site_resource(gateway, clock)), builds


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=paths,
    query=query_pairs,
    headers=st.dictionaries(header_names, header_values, max_size=4),
    body=bodies,
    credential=credentials,
)
def test_http_surface(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes, credential: str
) -> None:
    """
    No request gets a 5xx or logs an unhandled error, and no build is created
    without the project's secret.
    """
    treq, builds = harness()
    query = [(name, value) for name, value in query if name != "token"]
    if credential == "wrong":
        query.append(("token", "not-" + SECRET))
    elif credential == "right-token":
        query.append(("token", SECRET))
    elif credential == "right-bearer":
        headers = {**headers, "Authorization": "Bearer " + SECRET}
    url = "http://gw.example" + path + ("?" + urlencode(query) if query else "")
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        response: Any = treq.request(method, url, data=body, headers=headers)
        treq.flush()
        response = result_of(response)
        result_of(response.content())
        treq.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.code < 500, (response.code, method, url)
    assert [event for event in observer if "log_failure" in event] == []
    if builds.secrets:
        assert credential.startswith("right"), url
        assert method == "POST"


@given(
    body=documents.map(lambda d: json.dumps(d).encode()),
    credential=credentials,
    headers=st.dictionaries(header_names.filter(lambda name: name != "Authorization"), header_values, max_size=3),
)
def test_builds_exactly_when_authenticated(body: bytes, credential: str, headers: dict[str, str]) -> None:
    """
    To a real project, a POSTed JSON document builds only with the right
    secret; with it, any JSON object is built or deliberately ignored, and
    anything else is a 400.
    """
    treq, builds = harness()
    url = "http://gw.example/events/webhook/solo"
    if credential == "wrong":
        url += "?token=not-" + SECRET
    elif credential == "right-token":
        url += "?token=" + SECRET
    elif credential == "right-bearer":
        headers = {**headers, "Authorization": "Bearer " + SECRET}
    response: Any = treq.post(url, data=body, headers=headers)
    treq.flush()
    response = result_of(response)
    answer = json.loads(result_of(response.content()))
    document = json.loads(body)
    if not credential.startswith("right"):
        assert response.code == 403
        assert builds.secrets == {}
    elif isinstance(document, dict):
        assert response.code == 200
        if "build_id" in answer:
            assert list(builds.secrets) == [answer["build_id"]]
        else:
            assert answer["ignored"]
            assert builds.secrets == {}
    else:
        assert response.code == 400
        assert builds.secrets == {}
