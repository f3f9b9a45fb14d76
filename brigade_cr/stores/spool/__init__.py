"""
A durable spool in front of a build store (promises P1, P2, P5 and P6 of docs/guarantees.md).

The package has four parts: ``record.py``, the record format, the batch
file's format and the file-name grammar (pure); ``disk.py``, the blocking
file steps (write, read, remove, park, recover, lock, probe); ``commit.py``, the group commit that batches
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

A record is written to a temporary file, fsynced, renamed into place and the
directory fsynced, all in a thread pool; only then does ``submit`` answer
(promise P1). Records submitted while a batch is being written wait and go
together in the next batch (``commit.py``), and a batch of several records
is one file (``NNNN.batch``, several past ``disk.BATCH_FILE_BYTES``): one
temporary file, one fsync, one rename and one directory fsync for all of
them, which succeed or fail together; a record submitted alone is written
at once, to a file of its own. The drainer
submits a record to ``inner``; once ``inner`` says created or duplicate it
lets the record go: a file of its own is unlinked and the directory fsynced;
a batch file is unlinked once the last of its records is let go. A crash in
between only means those builds are submitted again after restart, and
``inner`` answers that with a duplicate (build names are idempotency keys).
A record parked in ``dead-letter/`` or ``quarantine/`` is moved there when
it has a file of its own, and copied out of its batch file (then let go)
when not.

On ``start()``: temporary files are deleted (their senders never got a 2xx);
every record is read and checked, damaged ones (or, in a batch file, each
damaged stretch) are moved to ``quarantine/``; the rest are drained, oldest
first. Attempt counts live in memory: after a restart a record that had
failed unexpectedly gets its full count again.
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
    Found,
    Placement,
    Recovery,
    SpoolLocked,
    park_bytes,
    park_record,
    park_slice,
    probe_directory,
    read_record,
    read_slice,
    recover,
    remove_record,
    remove_records,
    write_record,
    write_record_files,
    write_records,
)
from brigade_cr.stores.spool.record import (
    RECORD_VERSION,
    CorruptRecord,
    Slot,
    batch_filename,
    decode_record,
    encode_batch,
    encode_record,
    parse_batch_filename,
    parse_record_filename,
    record_filename,
    split_batch,
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
    "Found",
    "Placement",
    "Recovery",
    "Slot",
    "SpoolLocked",
    "SpoolStats",
    "SpooledBuilds",
    "batch_filename",
    "decode_record",
    "encode_batch",
    "encode_record",
    "error_type",
    "park_bytes",
    "park_record",
    "park_slice",
    "parse_batch_filename",
    "parse_record_filename",
    "probe_directory",
    "read_record",
    "read_slice",
    "record_filename",
    "recover",
    "remove_record",
    "remove_records",
    "split_batch",
    "traceback_summary",
    "write_record",
    "write_record_files",
    "write_records",
]
