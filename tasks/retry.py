"""Which failures are worth a retry: transient I/O and a busy warehouse, never user errors or bugs."""

from __future__ import annotations

import errno

from selfexplain.errors import SelfExplainError
from selfexplain.warehouse import WarehouseInUse


PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                    errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
"""A full or read-only disk, a missing path: retrying in seconds changes nothing."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, WarehouseInUse):
        return True  # another writer holds the file for a moment
    if isinstance(error, SelfExplainError):
        return False  # bad input, a missing model: the same next time
    if isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS:
        return False
    return isinstance(error, (OSError, TimeoutError, ConnectionError, MemoryError))


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures."""
    try:
        state.result()
    except BaseException as error:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(error)
    return False
