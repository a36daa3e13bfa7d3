"""The results store: append-only JSONL per run directory, a manifest, a lock.

* ``results.jsonl``: one row per sample, flushed and fsynced per batch. A run
  killed at any moment (kill -9 included) leaves at most a torn last line,
  which is dropped on the next open; rows already written are never rewritten.
* ``manifest.json``: resolved config, seed, package versions, git commit.
  A resumed run must have the same config.
* ``.lock``: an exclusive ``flock``; a second concurrent run is refused.
"""

from __future__ import annotations

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

SCHEMA = "lceval-results/1"
RESULTS, MANIFEST, LOCK = "results.jsonl", "manifest.json", ".lock"


def row_key(row: dict) -> tuple[str, str, str]:
    return row["pairing"], row["task"], row["sample_id"]


def read_rows(run_dir: Path) -> list[dict]:
    """All complete rows of a run, first occurrence of each key only."""
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return []
    rows, seen = [], set()
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn last line of a killed run
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row_key(row) not in seen:
                seen.add(row_key(row))
                rows.append(row)
    return rows


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("lceval", "torch", "numpy", "pandas", "tokenizers", "safetensors", "pydantic", "triton", "transformers"):
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


class ResultsStore:
    """Open a run directory for writing; use as a context manager."""

    def __init__(self, run_dir: Path, manifest: dict):
        self.dir = Path(run_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"--out {self.dir} is a file, not a directory; pass a directory for the run")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = (self.dir / LOCK).open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            pid = self._lock.read().strip() or "?"
            self._lock.close()
            raise UserError(f"another lceval run (pid {pid}) is writing {self.dir}; "
                            f"wait for it to finish or pass a different --out") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self._check_manifest(manifest)
        self._repair_tail()
        self.rows = read_rows(self.dir)
        self.done = {row_key(r) for r in self.rows}
        self._f = (self.dir / RESULTS).open("a")

    def _check_manifest(self, manifest: dict) -> None:
        path = self.dir / MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("config_hash") != manifest["config_hash"]:
                self.close()
                what = "--limit" if old.get("limit") != manifest.get("limit") else "config"
                raise UserError(f"{self.dir} holds a run with a different {what}; pass a new --out "
                                f"to start another run, or delete the directory to start over")
            self.resumed = True
            new_report = manifest.get("config", {}).get("report")
            if new_report is not None and old.get("config", {}).get("report") != new_report:
                old["config"]["report"] = new_report  # report settings change no row: take the new ones
                self._write_manifest(old)
            return
        self.resumed = False
        self._write_manifest({"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "argv": sys.argv, "versions": package_versions(), "git_commit": git_commit(), **manifest})

    def _write_manifest(self, manifest: dict) -> None:
        path = self.dir / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        tmp.replace(path)

    def _repair_tail(self) -> None:
        """Cut a torn last line (from a kill mid-write) so appends start clean."""
        path = self.dir / RESULTS
        if not path.exists():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, rows: list[dict]) -> None:
        fresh = [r for r in rows if row_key(r) not in self.done]
        if not fresh:
            return
        self._f.write("".join(json.dumps(r, default=float) + "\n" for r in fresh))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.update(row_key(r) for r in fresh)
        self.rows.extend(fresh)

    def close(self) -> None:
        if getattr(self, "_f", None) is not None:
            self._f.close()
            self._f = None
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
