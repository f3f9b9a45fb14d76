"""
A durable spool in front of a build store (promises P1, P2, P5 and P6 of docs/guarantees.md).

The package has four parts: ``record.py``, the record format and file-name
grammar (pure); ``disk.py``, the blocking file steps (write, read, remove,
park, recover, lock, probe); ``commit.py``, the group commit that batches
concurrent writes and removals; ``spooled.py``, the drainer, ``SpooledBuilds``.
Every name other modules use is re-exported here.

``SpooledBuilds`` is an ``IBuilds`` that answers ``submit`` only once the
build is on disk, then hands it to the ``IBuilds`` it wraps (``inner``,
normally ``KubeBuilds``) in the background, and removes it once ``inner``
has it. An outage of ``inner`` costs nothing but time: the records wait, and
are retried with backoff until it is back.

No record holds back another. Records are handed over oldest first among
those that are due, up to ``max_in_flight`` (4) at once, and each has its own
attempt count and its own next-attempt time:

- ``BackendRejected`` (the store refused the build for good) moves the record
  to ``dead-letter/`` at once.
- ``BackendUnavailable`` (the store is failing: API down, 503, 429) is the
  store's trouble, not the record's: it is retried without limit, and the
  drainer backs off as a whole (jittered exponential backoff honouring
  ``Retry-After``), then sends one probe record at a time until one
  succeeds, so a failing store is not hammered by the whole queue.
- Any other exception while reading or submitting a record (a surprise in
  ``inner``: a bug, a value its client cannot encode) is the record's
  trouble: that record alone is retried with its own backoff while the
  others go on, and after ``max_attempts`` (``MAX_ATTEMPTS``, 5) such
  failures it moves to ``dead-letter/``, its reason file naming the
  exception's type and its innermost frames (never the exception's message
  or any variable, which could hold payload data or credentials).
- A record that cannot be decoded is damaged: it moves to ``quarantine/``.

One writer per directory: ``start()`` takes an exclusive ``flock`` on
``DIR/spool.lock`` and fails with ``SpoolLocked`` while another process holds
it. Put the directory on a persistent volume that supports ``flock`` and
``fsync`` (a local disk or a block-backed PersistentVolume; not an emptyDir
if the spool must survive the pod, and not NFS). Everything the spool owns is
named in ``disk.py``; any other file in the directory (``projects.json``, say) is left
alone.

The directory and the record format
===================================

``disk.py`` names every file the spool owns (records, ``dead-letter/``,
``quarantine/``, ``spool.lock``, the probe file); ``record.py`` gives the
record's checksummed format and its file-name grammar.

Writing, draining, recovering
=============================

A record is written to its temporary file, fsynced, renamed into place and
the directory fsynced, all in a thread pool; only then does ``submit`` answer
(promise P1). Records submitted while a batch is being written go together
in the next batch: one thread-pool call and one directory fsync for all of
them (``commit.py``); a record submitted alone is written at once. The
drainer submits a record to ``inner``; once ``inner`` says created
or duplicate it unlinks the record and fsyncs the directory. A crash between
the two only means the build is submitted again after restart, and ``inner``
answers that with a duplicate (build names are idempotency keys).

On ``start()``: temporary files are deleted (their senders never got a 2xx);
every record is read and checked, damaged ones are moved to ``quarantine/``;
the rest are drained, oldest first. Attempt counts live in memory: after a
restart a record that had failed unexpectedly gets its full count again.
"""

from brigade_cr.stores.spool.disk import (
    DEAD_LETTER,
    DEAD_LETTER_STEPS,
    DRAIN_STEPS,
    LOCK_FILE,
    PROBE_FILE,
    QUARANTINE,
    REASON_SUFFIX,
    WRITE_STEPS,
    Recovery,
    SpoolLocked,
    park_record,
    probe_directory,
    read_record,
    recover,
    remove_record,
    remove_records,
    write_record,
    write_records,
)
from brigade_cr.stores.spool.record import (
    RECORD_VERSION,
    CorruptRecord,
    decode_record,
    encode_record,
    parse_record_filename,
    record_filename,
)
from brigade_cr.stores.spool.spooled import (
    MAX_ATTEMPTS,
    MAX_IN_FLIGHT,
    TRACEBACK_FRAMES,
    SpooledBuilds,
    SpoolStats,
    error_type,
    traceback_summary,
)

__all__ = [
    "DEAD_LETTER",
    "DEAD_LETTER_STEPS",
    "DRAIN_STEPS",
    "LOCK_FILE",
    "MAX_ATTEMPTS",
    "MAX_IN_FLIGHT",
    "PROBE_FILE",
    "QUARANTINE",
    "REASON_SUFFIX",
    "RECORD_VERSION",
    "TRACEBACK_FRAMES",
    "WRITE_STEPS",
    "CorruptRecord",
    "Recovery",
    "SpoolLocked",
    "SpoolStats",
    "SpooledBuilds",
    "decode_record",
    "encode_record",
    "error_type",
    "park_record",
    "parse_record_filename",
    "probe_directory",
    "read_record",
    "record_filename",
    "recover",
    "remove_record",
    "remove_records",
    "traceback_summary",
    "write_record",
    "write_records",
]
