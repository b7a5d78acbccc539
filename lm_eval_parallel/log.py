"""The package's logger, and warnings logged once per process."""

from __future__ import annotations

import logging

log = logging.getLogger("lm_eval_parallel")
_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)
