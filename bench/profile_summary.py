"""
Where the gateway's reactor thread spends its time, from a py-spy profile.

Reads a py-spy ``raw`` (collapsed stacks) file, as ``bench_burst.py
--profile`` writes to ``bench/results/profile-*.txt`` or as ``py-spy record
--function --format raw -o FILE --pid PID`` does, keeps the reactor thread's
samples (stacks through ``ReactorBase.mainLoop``), and prints:

- each sample charged to one category, by the frame nearest the leaf that
  belongs to one (logging, JSON, new connections, HTTP client, HTTP server,
  brigade_cr's own code, Deferreds, socket I/O and the reactor);
- the functions with the most samples of their own, and the brigade_cr
  functions with the most samples including their callees.

Run: ``python bench/profile_summary.py FILE [--top N]``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

CATEGORIES = [
    (
        "logging (twisted.logger, log file, access log)",
        r"twisted/logger/|logfile\.py|untilConcludes|_tzhelper|HTTPFactory\.log |redacting_log_formatter"
        r"|twisted/python/log\.py:(?!85|79)",
    ),
    ("JSON encode/decode", r"json/"),
    ("payload depth check (_depth_exceeds)", r"_depth_exceeds"),
    ("Content-Type parsing via email (twisted.web)", r"email/"),
    (
        "new TCP connections to the API (connect, resolve, close)",
        r"doConnect|_SocketCloser|HostnameEndpoint|TCP4ClientEndpoint|resolveAddress|_connectDone|_BaseBaseClient"
        r"|BaseClient\.|_newConnection|createInternetSocket|endpointForURI",
    ),
    ("HTTP client (Agent, _newclient, treq)", r"twisted/web/_newclient|twisted/web/client\.py|treq/"),
    (
        "HTTP server (twisted.web, Klein, werkzeug)",
        r"twisted/web/http\.py|twisted/web/server\.py|klein/|werkzeug/|twisted/web/resource|http_headers",
    ),
    ("brigade_cr (own code)", r"brigade_cr/"),
    ("Deferreds / coroutines", r"twisted/internet/defer\.py"),
    ("socket I/O and the reactor loop", r"twisted/internet/|twisted/python/"),
]
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


def summarise(text: str, top: int) -> str:
    """The report for the raw profile ``text``."""
    categories: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = other = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any(frame.startswith("ReactorBase.mainLoop ") for frame in frames):
            other += count
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        for frame in reversed(frames):
            hit = next((name for name, pattern in _COMPILED if pattern.search(frame)), None)
            if hit is not None:
                categories[hit] += count
                break
        else:
            categories["other (stdlib, attrs, zope)"] += count
    if not samples:
        return "no reactor-thread samples"
    lines = [f"reactor thread: {samples} samples ({other} in other threads)", "", "by category:"]
    lines += [f"{100 * n / samples:5.1f}%  {name}" for name, n in categories.most_common()]
    lines += ["", f"top {top} functions by own samples:"]
    lines += [f"{100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", f"top {top} brigade_cr functions including callees:"]
    ours = [(name, n) for name, n in inclusive.most_common() if "brigade_cr/" in name][:top]
    lines += [f"{100 * n / samples:5.1f}%  {name}" for name, n in ours]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarise(args.raw.read_text(), args.top))


if __name__ == "__main__":
    main()
