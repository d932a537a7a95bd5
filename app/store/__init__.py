"""The node's shared state: the duplicate claims and the quota counts in one store, a SQLite file of the node or a
Redis server shared by several nodes, chosen by `[server] dedup_store`."""
from __future__ import annotations

import os
import threading

from app.store.base import OverQuota, Quota, Store, StoreError
from app.store.folder import STATE_DIR_VARIABLE, StateFolderError, state_folder

__all__ = ["OverQuota", "Quota", "Store", "StoreError", "open_store"]
_opened: dict[tuple[str, str], Store] = {}
_opened_lock = threading.Lock()


def open_store(url: str) -> Store:
    """The store `url` names: a redis:// URL, or "" for the SQLite file in the node's state folder; one per process."""
    name = (url, "" if url else os.environ.get(STATE_DIR_VARIABLE, ""))
    with _opened_lock:
        if name not in _opened:
            _opened[name] = _new_store(url)
        return _opened[name]


def _new_store(url: str) -> Store:
    if url:
        from app.store.redis import RedisStore  # redis-py is loaded only where Redis is used

        return RedisStore(url)
    from app.store.sqlite import SqliteStore

    try:
        folder = state_folder()
    except StateFolderError as error:
        raise StoreError(str(error)) from None
    return SqliteStore(folder.file("duplicates.sqlite3"), folder.path / "duplicates.sqlite3")
