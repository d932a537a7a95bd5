"""The SQLite store's tables in the file, and each connection's own (temporary) schema through which a write is one
INSERT: one transaction in one call into SQLite, so that the file's write lock is held only inside SQLite (threads
that held it while they waited for Python's interpreter lock took a third of a busy node's throughput)."""
from __future__ import annotations

import functools

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires)",
    # One row per count of a quota: the moving window is the rows of the last period.
    "CREATE TABLE IF NOT EXISTS hits (quota TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS hits_by_quota ON hits (quota, at)",
    "CREATE INDEX IF NOT EXISTS hits_by_expiry ON hits (expires)",
)

# A row of `requests` is a claim (or a count, without key) or a settle (with `old`); a claim counts up to
# QUOTA_SLOTS quotas, a key, limit and period each (the service has two: the client's and the sender's). What a
# claim did not store comes back in `outcomes` under its row's number `n`: no quota for a claim in force, else the
# first full quota's slot and the seconds until it has room.
QUOTA_SLOTS = 2
COLUMNS = ("n", "key", "record", "ttl", "old", "now", "purge",
           *(f"{part}{slot}" for slot in range(QUOTA_SLOTS) for part in ("quota", "limit", "period")))
_QUOTA_FULL = """
  -- Full: as many counts in the window as the limit. Room comes when the newest `limit`-th count leaves it.
  INSERT OR IGNORE INTO outcomes (n, quota, retry_after)
    SELECT NEW.n, {slot}, NEW.period{slot} - NEW.now + (
      SELECT at FROM (SELECT at, row_number() OVER (ORDER BY at DESC) AS newest FROM hits
                      WHERE quota = NEW.quota{slot} AND at > NEW.now - NEW.period{slot}) WHERE newest = NEW.limit{slot})
    WHERE NEW.quota{slot} IS NOT NULL
      AND (SELECT count(*) FROM hits WHERE quota = NEW.quota{slot} AND at > NEW.now - NEW.period{slot})
          >= NEW.limit{slot};"""
_QUOTA_COUNT = """
  SELECT NEW.quota{slot}, NEW.now, NEW.now + NEW.period{slot} WHERE NEW.quota{slot} IS NOT NULL"""
_NOT_REFUSED = "NOT EXISTS (SELECT 1 FROM outcomes WHERE n = NEW.n)"
REQUESTS_SCHEMA = (
    "PRAGMA temp_store=MEMORY",
    "CREATE TEMP TABLE outcomes (n INTEGER PRIMARY KEY, quota INTEGER, retry_after REAL)",
    f"CREATE TEMP VIEW requests ({', '.join(COLUMNS)}) AS SELECT {', '.join('NULL' for _ in COLUMNS)}",
    f"""CREATE TEMP TRIGGER claim INSTEAD OF INSERT ON requests WHEN NEW.old IS NULL BEGIN
  -- A claim in force: nothing stored, nothing counted.
  INSERT INTO outcomes (n) SELECT NEW.n WHERE EXISTS (SELECT 1 FROM claims WHERE key = NEW.key AND expires > NEW.now);
  {''.join(_QUOTA_FULL.format(slot=slot) for slot in range(QUOTA_SLOTS))}
  INSERT INTO claims (key, record, expires) SELECT NEW.key, NEW.record, NEW.now + NEW.ttl
    WHERE NEW.key IS NOT NULL AND {_NOT_REFUSED}
    ON CONFLICT (key) DO UPDATE SET record = excluded.record, expires = excluded.expires;
  INSERT INTO hits (quota, at, expires) SELECT * FROM ({' UNION ALL'.join(
        _QUOTA_COUNT.format(slot=slot) for slot in range(QUOTA_SLOTS))}) WHERE {_NOT_REFUSED};
END""",
    # Every few claims, the first row of a write also removes a few expired claims and counts: no endless growth.
    """CREATE TEMP TRIGGER purge INSTEAD OF INSERT ON requests WHEN NEW.purge > 0 BEGIN
  DELETE FROM claims WHERE rowid IN (SELECT rowid FROM claims WHERE expires <= NEW.now LIMIT NEW.purge);
  DELETE FROM hits WHERE rowid IN (SELECT rowid FROM hits WHERE expires <= NEW.now LIMIT NEW.purge);
END""",
    # A settle: the claim's record `old` replaced by `record`, or removed when `record` is NULL.
    """CREATE TEMP TRIGGER settle INSTEAD OF INSERT ON requests WHEN NEW.old IS NOT NULL BEGIN
  UPDATE claims SET record = NEW.record, expires = NEW.now + NEW.ttl
    WHERE NEW.record IS NOT NULL AND key = NEW.key AND record = NEW.old;
  DELETE FROM claims WHERE NEW.record IS NULL AND key = NEW.key AND record = NEW.old;
END""",
)
OUTCOMES = "DELETE FROM outcomes RETURNING n, quota, retry_after"


@functools.lru_cache(maxsize=64)
def insert_requests(rows: int) -> str:
    """The INSERT of `rows` rows into `requests`, in their order."""
    row = f"({', '.join('?' for _ in COLUMNS)})"
    return f"INSERT INTO requests VALUES {', '.join(row for _ in range(rows))}"
