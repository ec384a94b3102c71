"""Keep the C++ start-up noise of TensorFlow / XLA / absl off the user's terminal.

TensorFlow 2.21 writes "All log messages before absl::InitializeLog() is called are written to STDERR" and
"cudart_stub.cc:31] Could not find cuda drivers ..." straight to file descriptor 2 from C++, at import, and
``TF_CPP_MIN_LOG_LEVEL`` no longer silences them. :func:`filter_native_logs` puts a pipe in front of fd 2 and
drops lines in the native log formats (absl ``I0000 00:00:... file.cc:31] ...``, TF's ``2026-01-01 ...: I
file.cc:31] ...``, absl's pre-init banner); everything else (Python tracebacks, warnings, progress bars that
redraw with ``\\r``) is forwarded as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sys
import threading
from collections.abc import Iterator

# A native log line: absl ("I0000 00:00:1796160572.355950    5335 cudart_stub.cc:31] ..."), TF's own
# ("2026-12-01 21:30:00.123456: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] ..."), absl's banner.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)")
_PARTIAL_WAIT_S = 0.05  # a native logger writes a whole line at once; a partial line is a progress bar


def is_native_log_line(line: bytes) -> bool:
    return NATIVE_LOG_LINE.match(line) is not None


def _pump(read_fd: int, out_fd: int) -> None:
    """Forward ``read_fd`` to ``out_fd`` line by line (``\\n`` or ``\\r``), dropping native log lines."""
    pending = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], _PARTIAL_WAIT_S if pending else None)
        if not ready:  # a partial line that nothing completed: a progress bar redraw, show it now
            os.write(out_fd, pending)
            pending = b""
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        pending += chunk
        segments = re.split(rb"(?<=[\r\n])", pending)
        pending = segments.pop()
        kept = b"".join(s for s in segments if not is_native_log_line(s))
        if kept:
            os.write(out_fd, kept)
    if pending and not is_native_log_line(pending):
        os.write(out_fd, pending)
    os.close(read_fd)


@contextlib.contextmanager
def filter_native_logs(enabled: bool = True) -> Iterator[None]:
    """Within the block, native log lines written to fd 2 (by this process or its children) are dropped."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved), name="fiat-native-log-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes our write end; the pump drains and stops (children may hold theirs)
        pump.join(timeout=2.0)
        if not pump.is_alive():
            os.close(saved)
