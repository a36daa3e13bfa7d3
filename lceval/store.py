"""The results store: append-only JSONL per run directory, a manifest, a lock.

* ``results.jsonl``: one row per sample, flushed and fsynced per batch. A run
  killed at any moment (kill -9 included) leaves at most a torn last line,
  which is cut on the next open; rows already written are never rewritten.
  When a key (pairing, task, sample_id) occurs more than once (a failed row
  retried with ``--retry-failed``), the latest row wins.
* Every row carries the ``run_id``: a hash of everything that decides results
  (config without report settings and batch size, --limit, task versions,
  model contents, lceval version). A resume verifies the rows themselves, so a
  deleted or edited manifest cannot mix two runs in one table.
* ``manifest.json``: resolved config, seed, package versions, git commit, and
  the identity behind the run id (what a refusal compares to say what changed).
* ``identities/<run_id>.json``: each run id's identity, written once, so a
  refusal can say what changed even after the manifest was deleted or edited.
* Lines that are not rows (garbage, NUL bytes, valid JSON of another shape) are
  copied to ``results.quarantine.jsonl``, reported once, and skipped.
* ``.lock``: an exclusive ``flock`` held for the whole command (the report
  included); the holder's pid is in ``.lock.pid``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lceval.errors import UserError
from lceval.rows import VERSION, Row, key_of

SCHEMA = f"lceval-results/{VERSION}"  # the row format (lceval.rows.VERSION)
RESULTS, MANIFEST, LOCK, QUARANTINE = "results.jsonl", "manifest.json", ".lock", "results.quarantine.jsonl"
IDENTITIES = "identities"


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers see the old or the new file, never half.
    A failure (a full disk) removes the temporary file and names ``path`` in the error."""
    tmp = Path(path).with_suffix(".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


_WARNED: set[tuple[str, int]] = set()


def read_rows(run_dir: Path, warn=None) -> list[dict]:
    """All complete rows of a run, the latest of each key; lines that are not rows are quarantined.

    ``warn(message)`` is called once when lines were quarantined (default: print to stderr).
    """
    return list(latest_rows(run_dir, warn).values())


def latest_rows(run_dir: Path, warn=None, run_id: str | None = None) -> dict[tuple, dict]:
    """``read_rows`` keyed by (pairing, task, sample_id), in first-seen order; with ``run_id``, only rows of
    that run (a row of another run never supersedes one of this run)."""
    return _latest(_rows(run_dir, warn), run_id)


def _latest(rows, run_id: str | None = None) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for row in rows:
        if run_id is None or row.get("run_id") == run_id:
            out[key_of(row)] = row
    return out


def rows_of_run(run_dir: Path, run_id: str | None, warn=None) -> tuple[list[dict], int]:
    """The latest rows of ``run_id`` and how many rows of other run ids were left out. Rows written before rows
    carried run ids all count (when none carries one); ``run_id=None`` takes every row. One pass over the file."""
    every = list(_rows(run_dir, warn))
    if run_id is None or not any(r.get("run_id") for r in every):
        return list(_latest(every).values()), 0
    other = sum(r.get("run_id") != run_id for r in every)
    return list(_latest(every, run_id).values()), other


def _rows(run_dir: Path, warn=None):
    """Every complete row line in file order; lines that are not rows are quarantined once, with a warning."""
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return
    bad: list[bytes] = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn last line of a killed run
            if not line.strip():
                continue
            try:
                row = Row.upgrade(json.loads(line))
            except ValueError:  # not JSON, invalid UTF-8, NUL bytes
                row = None
            if row is None:  # not a row of any lceval (garbage, another shape, an unknown status)
                bad.append(line)
                continue
            yield row
    if bad and (str(path), len(bad)) not in _WARNED:
        _WARNED.add((str(path), len(bad)))  # said once per process, however often the rows are read
        side = Path(run_dir) / QUARANTINE
        try:
            side.write_bytes(b"".join(bad))
            where = f"copied to {side}"
        except OSError:
            where = "left in place"
        (warn or _stderr)(f"warning: {len(bad)} line(s) of {path} are not result rows; skipped ({where})")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("lceval", "torch", "numpy", "pandas", "tokenizers", "safetensors", "pydantic", "triton",
                 "transformers", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() + ("-dirty" if dirty else "")


def read_manifest(run_dir: Path) -> dict:
    """The run's manifest, or ``{}`` when it is missing or damaged (rows carry their own run id)."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("config", {}), dict) else {}


def describe_change(old: dict, new: dict) -> str:
    """What differs between two run identities, in words."""
    if not old:
        return "the rows were written by another run (its manifest is missing or damaged)"
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            parts += [f"config {p}" for p in _diff_paths(a, b)]
        elif key == "models" and isinstance(a, dict) and isinstance(b, dict):
            parts += [f"model {m}'s contents" for m in sorted(set(a) | set(b)) if a.get(m) != b.get(m)]
        elif key == "task_configs" and not (isinstance(a, dict) and isinstance(b, dict)):
            parts.append("typed task configs (not recorded by the older run)")
        elif key == "task_configs":
            config_paths = set(_diff_paths(old.get("config") or {}, new.get("config") or {}))
            parts += [f"task config {p}" for p in _diff_paths(a, b)  # what the raw config change does not name
                      if f"tasks.{p}" not in config_paths]
        elif key == "task_versions":
            parts.append(f"task versions ({a} -> {b})")
        else:
            parts.append(f"{key} ({a} -> {b})")
    return ", ".join(parts[:6]) or "the run identity"


def _diff_paths(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


class ResultsStore:
    """Open a run directory for writing; use as a context manager.

    The constructor takes the lock; ``begin(manifest)`` checks what is already
    there against this run's identity and prepares appending.
    """

    def __init__(self, run_dir: Path, manifest: dict | None = None):
        self.dir = Path(run_dir)
        self._f = None
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"--out {self.dir} is a file, not a directory; pass a directory for the run")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = (self.dir / LOCK).open("a")
        except OSError as exc:
            raise UserError(f"cannot write the run directory {self.dir}: {os_reason(exc)}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            try:
                pid = (self.dir / (LOCK + ".pid")).read_text().strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise UserError(f"another lceval run (pid {pid}) is writing {self.dir}; "
                            f"wait for it to finish or pass a different --out") from None
        pid_file = self.dir / (LOCK + ".pid")
        tmp = pid_file.with_suffix(".tmp")
        try:
            tmp.write_text(str(os.getpid()))
            tmp.replace(pid_file)
        except OSError:
            self.close()  # never leave the lock (and its file) open behind an error
            raise
        self._latest: dict[tuple, dict] = {}  # the latest row of each key: the run's rows and what is done
        self.run_id: str | None = None  # set by ``begin``; stamped on every appended row
        if manifest is not None:
            self.begin(manifest)

    def begin(self, manifest: dict) -> None:
        """Check the directory's rows against ``manifest['run_id']``, write the manifest, open for appending."""
        self._repair_tail()
        run_id = self.run_id = manifest.get("run_id")
        latest = latest_rows(self.dir)
        rows = list(latest.values())
        old = read_manifest(self.dir)
        foreign = [r for r in rows if r.get("run_id") != run_id]
        if foreign:
            if all(r.get("run_id") is None for r in foreign):
                what = "they were written by an older lceval, before rows carried a run id"
            else:
                what = describe_change(self._identity_of(foreign, old), manifest.get("identity", {}))
            self.close()
            raise UserError(f"{self.dir} holds {len(foreign)} rows from a different run ({what}); pass a new --out "
                            f"to start another run, or delete the directory to start over")
        self._latest = latest
        fresh = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "argv": sys.argv, "versions": package_versions(), "git_commit": git_commit(), **manifest}
        if rows and old.get("run_id") == run_id:  # keep when and how the run started; take new report settings
            fresh.update({k: old[k] for k in ("created", "argv", "git_commit", "versions") if k in old})
        self._write_manifest(fresh)
        self._f = (self.dir / RESULTS).open("a")

    def _identity_of(self, foreign: list[dict], manifest: dict) -> dict:
        """The identity the foreign rows were written under: its own file, else the manifest's if it names the
        same run id ({} when neither survives)."""
        ids = [r["run_id"] for r in foreign if isinstance(r.get("run_id"), str)]
        theirs = max(set(ids), key=ids.count) if ids else None
        try:
            return json.loads((self.dir / IDENTITIES / f"{theirs}.json").read_text())
        except (OSError, ValueError, TypeError):
            return manifest.get("identity", {}) if manifest.get("run_id") == theirs else {}

    def _write_manifest(self, manifest: dict) -> None:
        write_atomic(self.dir / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
        run_id, ident = manifest.get("run_id"), manifest.get("identity")
        if isinstance(run_id, str) and ident is not None and not (self.dir / IDENTITIES / f"{run_id}.json").exists():
            (self.dir / IDENTITIES).mkdir(exist_ok=True)
            write_atomic(self.dir / IDENTITIES / f"{run_id}.json", json.dumps(ident, sort_keys=True) + "\n")

    def _repair_tail(self) -> None:
        """Cut a torn last line (from a kill mid-write) so appends start clean."""
        path = self.dir / RESULTS
        if not path.exists():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, rows: list[Row]) -> None:
        """Append rows (validated, stamped with this run's id, fsynced); a row for a key already present
        supersedes it (retries)."""
        if not rows:
            return
        rows = [Row.model_validate(r).model_copy(update={"run_id": self.run_id}).as_dict() for r in rows]
        try:
            self._f.write("".join(json.dumps(r, default=float) + "\n" for r in rows))
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:  # name the file: "no space left on device (ENOSPC)" alone says too little
            raise OSError(exc.errno, exc.strerror, str(self.dir / RESULTS)) from None
        self._latest.update((key_of(r), r) for r in rows)

    @property
    def rows(self) -> list[dict]:
        """The latest row of each key."""
        return list(self._latest.values())

    @property
    def done(self):
        """The keys that have a row (a set-like view)."""
        return self._latest.keys()

    def status_of(self) -> dict[tuple, str]:
        return {key: r["status"] for key, r in self._latest.items()}

    def close(self) -> None:
        """Close the results file and release the lock; the lock is released even if closing fails
        (a full disk fails again when the file's buffer is flushed)."""
        try:
            if self._f is not None:
                f, self._f = self._f, None
                try:
                    f.close()
                except OSError:
                    pass  # the write that failed already raised; a torn tail is cut on the next open
        finally:
            if not self._lock.closed:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def os_reason(exc: OSError) -> str:
    """An OSError in words: 'read-only file system (EROFS)'."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    text = (exc.strerror or str(exc)).lower()
    return f"{text} ({name})" if name else text
