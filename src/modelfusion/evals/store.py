"""The run folder: settings.json, records.jsonl and atomic writes for everything else.

records.jsonl holds one JSON line per finished (config, problem), written in one call and
flushed to disk before the next starts, so an interrupted run loses at most the pair that
was running. A torn last line (power cut mid-write) is dropped on load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..errors import UsageError
from ..files import atomic_write
from .record import EvalRecord

RECORDS = "records.jsonl"
SETTINGS = "settings.json"
OUTPUTS = ("results.json", "results.md", "chart.png")
CALLS = "calls"


class SettingsMismatch(UsageError):
    """The folder holds records made with other settings."""


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records_path = path / RECORDS
        self.settings_path = path / SETTINGS
        self.calls_path = path / CALLS

    def prepare(self, *, fresh: bool) -> None:
        """Create the folder (checking it is writable); `fresh` removes a previous run."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if fresh:
                for name in (RECORDS, SETTINGS, *OUTPUTS):
                    (self.path / name).unlink(missing_ok=True)
                shutil.rmtree(self.calls_path, ignore_errors=True)
            self.calls_path.mkdir(exist_ok=True)
            atomic_write(self.path / ".write-check", "")
            (self.path / ".write-check").unlink()
        except OSError as e:
            raise UsageError(f"--out {self.path}: cannot write there ({e.strerror or e}); "
                             "pick another folder with --out") from None

    # ---- settings

    def check_settings(self, common: Mapping[str, Any], configs: Mapping[str, Any],
                       info: Mapping[str, Any]) -> dict[str, Any]:
        """Merge this run's settings with the folder's; refuse where they disagree.

        `common` (prompt, seed, sampling, limits) must be identical; a config already in the
        folder must be defined the same way; new configs are added. `info` (task ids,
        versions) is informational and takes this run's values.
        """
        old = self.load_settings()
        merged_configs = dict(configs)
        if old is not None:
            hint = (f"; rerun with --fresh to start over in {self.path}, or choose a new --out")
            for key, value in common.items():
                if old["common"].get(key) != value:
                    raise SettingsMismatch(
                        f"{self.path} holds a run made with {key}={old['common'].get(key)!r}, "
                        f"this run has {key}={value!r}{hint}")
            for name, value in configs.items():
                previous = old["configs"].get(name)
                if previous is not None and previous != value:
                    raise SettingsMismatch(
                        f"{self.path} holds config {name!r} defined as {previous}, this run "
                        f"defines it as {value}{hint}")
            merged_configs = {**old["configs"], **configs}
        settings = {"common": dict(common), "configs": merged_configs, **info}
        atomic_write(self.settings_path, json.dumps(settings, indent=2) + "\n")
        return settings

    def load_settings(self) -> dict[str, Any] | None:
        if not self.settings_path.exists():
            return None
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.settings_path} is unreadable ({e}); use --fresh") from None
        if not isinstance(data, dict) or "common" not in data or "configs" not in data:
            raise UsageError(f"{self.settings_path} is not a fusion eval settings file; "
                             "use --fresh or another --out")
        return data

    # ---- records

    def load_records(self) -> dict[tuple[str, str], EvalRecord]:
        """(config, task_id) -> record. A torn last line is dropped (and cut from the file)."""
        if not self.records_path.exists():
            return {}
        raw = self.records_path.read_text(encoding="utf-8")
        records: dict[tuple[str, str], EvalRecord] = {}
        good: list[str] = []
        for line in raw.splitlines():
            try:
                record = EvalRecord.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            records[(record.config, record.task_id)] = record
            good.append(line)  # kept as read: the file is never re-serialised
        if len(good) != len(raw.splitlines()) or (raw and not raw.endswith("\n")):
            atomic_write(self.records_path, "".join(line + "\n" for line in good))
        return records

    @contextmanager
    def appender(self) -> Iterator[RecordWriter]:
        with self.records_path.open("a", encoding="utf-8") as f:
            yield RecordWriter(f)


class RecordWriter:
    def __init__(self, f: TextIO) -> None:
        self._f = f

    def append(self, record: EvalRecord) -> None:
        self._f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")  # one write
        self._f.flush()
        os.fsync(self._f.fileno())
