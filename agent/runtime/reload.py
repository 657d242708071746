"""Live configuration: config.yaml is watched (and SIGHUP reloads); a valid edit is applied
without dropping in-flight work, an invalid one is rejected and the old configuration stays.

Watching the file's *directory* (not the file) catches every way an editor or a deployment
tool replaces it: in-place writes, save-through-rename (vim, sed -i, Ansible) and symlink
swaps (Kubernetes ConfigMaps rename ``..data``). Only a change of the file's bytes, or a
SIGHUP, leads to a reload.

What can change live is decided per key: `RESTART_ONLY` keys keep their running value and are
reported as "needs restart" until the agent restarts; every other changed key is handed to the
subscribed appliers (the daemon's own for workers, log level and compression; other features
subscribe for thresholds, recipients and schedules).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from agent.config import Config, load_config
from agent.errors import ConfigError

log = structlog.get_logger("agent.reload")

RESTART_ONLY = (
    "aws",
    "queue",
    "state",
    "buckets",
    "storage.root",
    "storage.volume_id",
    "storage.min_free_bytes",
    "storage.resume_headroom_bytes",
    "storage.hold_back",
    "storage.pause_recheck_max",
    "consumer.max_bytes_in_flight",
    "consumer.recent_versions",  # the memory is made with the backup service
    "retention.when_full",  # its job is registered at start
    "storage.auto_grow",  # likewise
    "fleet",  # the ledger's replica group is its queue's, fixed at start like the queue
)
WATCHED_EVENTS = {"created", "modified", "moved", "deleted", "closed"}
DEBOUNCE_SECONDS = 0.2
MAX_DEBOUNCE_SECONDS = 2.0

Applier = Callable[[Config, Config], None]
"""Called as applier(old, new) after a valid edit; must not block on in-flight work."""
RejectedHook = Callable[[list[str]], None]


@dataclass(frozen=True)
class ReloadOutcome:
    status: Literal["applied", "unchanged", "rejected"]
    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def flatten(config: Config) -> dict[str, Any]:
    """`{"consumer.workers": 4, "buckets": [...], ...}` — leaves of the config by dotted key."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", config.model_dump(mode="json"))
    return flat


def changed_keys(old: Config, new: Config) -> list[str]:
    before, after = flatten(old), flatten(new)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def needs_restart(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESTART_ONLY)


def effective_config(running: Config, edited: Config) -> Config:
    """The edited config with every restart-only setting kept at its running value."""
    raw = edited.model_dump()
    current = running.model_dump()
    for path in RESTART_ONLY:
        _copy_path(current, raw, path.split("."))
    return Config.model_validate(raw)


def _copy_path(source: dict[str, Any], target: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in source:
        return
    if not rest:
        target[head] = source[head]
    elif isinstance(source[head], dict) and isinstance(target.get(head), dict):
        _copy_path(source[head], target[head], rest)


class ConfigReloader:
    """Owns the running Config; `reload()` validates and applies, `request()` schedules it."""

    def __init__(
        self,
        path: Path,
        current: Config,
        *,
        on_rejected: RejectedHook | None = None,
        debounce: float = DEBOUNCE_SECONDS,
    ) -> None:
        self.path = Path(path).absolute()
        self._config = current
        self.on_rejected = on_rejected
        self.debounce = debounce
        self._appliers: list[Applier] = []
        self._seen = self._digest()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._force = False
        self._reasons: list[str] = []
        self._thread: threading.Thread | None = None
        self._observer: Any = None

    @property
    def config(self) -> Config:
        return self._config

    def subscribe(self, applier: Applier) -> None:
        self._appliers.append(applier)

    # -- start and stop --------------------------------------------------------------

    def start(self) -> None:
        from watchdog.observers import Observer

        self._thread = threading.Thread(target=self._loop, name="config-reload", daemon=True)
        self._thread.start()
        observer = Observer()
        handler = _DirectoryHandler(self)
        for directory in self._watched_directories():
            observer.schedule(handler, str(directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("config.watching", path=str(self.path))
        if self._digest() != self._seen:  # an edit made during start-up
            self.request("changed before watching started")

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        if self._thread is not None:
            self._thread.join(5)

    def _watched_directories(self) -> list[Path]:
        directories = [self.path.parent]
        target = self.path.resolve().parent
        # A symlink into another directory: watch that too (but not Kubernetes' timestamped
        # subdirectories of the same directory, which are replaced, not edited).
        if target != self.path.parent and self.path.parent not in target.parents:
            directories.append(target)
        return directories

    # -- requests (any thread, and signal handlers) ------------------------------------

    def request(self, reason: str, *, force: bool = False) -> None:
        """Schedule a reload; `force` reloads even when the bytes did not change (SIGHUP)."""
        self._force = self._force or force
        self._reasons.append(reason)
        self._wake.set()

    def relevant(self, path: str) -> bool:
        """Events on the file itself, its symlink target, or a `..data`-style swap."""
        name = Path(path).name
        return name in {self.path.name, self.path.resolve().name} or name.startswith("..")

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait()
            settle_until = time.monotonic() + MAX_DEBOUNCE_SECONDS
            while not self._stopped.is_set():  # let a burst of editor events settle
                self._wake.clear()
                if not self._wake.wait(self.debounce) or time.monotonic() > settle_until:
                    break
            if self._stopped.is_set():
                return
            force, self._force = self._force, False
            reasons, self._reasons = sorted(set(self._reasons)), []
            try:
                self.reload(",".join(reasons) or "request", force=force)
            except Exception:  # the watcher thread must survive anything
                log.exception("config.reload_crashed", path=str(self.path))

    # -- the reload itself -------------------------------------------------------------

    def reload(self, reason: str = "request", *, force: bool = True) -> ReloadOutcome:
        """Validate the file and apply it; never raises for an invalid file."""
        with self._lock:
            digest = self._digest()
            if digest == self._seen and not force:
                return ReloadOutcome("unchanged")
            self._seen = digest
            try:
                edited = load_config(self.path)
            except ConfigError as exc:
                return self._reject(exc.problems, reason)
            return self._apply(edited, reason)

    def _reject(self, problems: list[str], reason: str) -> ReloadOutcome:
        log.error(
            "config.reload_rejected",
            path=str(self.path),
            reason=reason,
            problems=problems,
            keeping="the running configuration",
        )
        if self.on_rejected is not None:
            try:
                self.on_rejected(problems)
            except Exception:  # an alert failure must not stop the agent
                log.exception("config.reject_hook_failed")
        return ReloadOutcome("rejected", problems=tuple(problems))

    def _apply(self, edited: Config, reason: str) -> ReloadOutcome:
        old = self._config
        new = effective_config(old, edited)
        restart = tuple(k for k in changed_keys(old, edited) if needs_restart(k))
        applied = tuple(changed_keys(old, new))
        if not applied and not restart:
            log.info("config.unchanged", path=str(self.path), reason=reason)
            return ReloadOutcome("unchanged")
        self._config = new
        for applier in self._appliers:
            try:
                applier(old, new)
            except Exception:  # one failing subscriber must not block others
                log.exception("config.apply_failed", applier=_name(applier))
        log.info(
            "config.reloaded",
            path=str(self.path),
            reason=reason,
            applied=list(applied),
            needs_restart=list(restart),
        )
        if restart:
            log.warning(
                "config.needs_restart",
                keys=list(restart),
                hint="systemctl restart backup-agent (in-flight work is drained first)",
            )
        return ReloadOutcome("applied", applied=applied, needs_restart=restart)

    def _digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None


class _DirectoryHandler(FileSystemEventHandler):
    """watchdog handler: any write, create, rename or delete in the directory schedules a
    reload check (reads of the file, including our own, are ignored)."""

    def __init__(self, reloader: ConfigReloader) -> None:
        super().__init__()
        self.reloader = reloader

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type not in WATCHED_EVENTS:
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(p and self.reloader.relevant(os.fsdecode(p)) for p in paths):
            self.reloader.request("file changed")


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))
