"""Pushing saved models to the Hub from a training run: in the background at each save, blocking at the end.

A push uploads a snapshot of the folder (hard links, or copies where links are impossible, in a temporary folder
next to it), so that checkpoint rotation or the next save cannot change the files while they upload. A push that
fails (no connection, no answer, a Hub error) is retried `retries` times with exponential back-off by
`zoo.hub.push_folder`, then recorded in `failures` and reported; it never deletes or changes the local files.
While a background push is running, a newer save does not start a second one (the final push always runs, after
waiting for the one in flight).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import HubError, PushError

from .checkpoint import link_tree

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    folder: Path
    repo_id: str
    url: str | None = None
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class HubPusher:
    """Pushes model folders to `repo_id` (see `zoo.hub.push_folder`), retrying failures."""

    def __init__(self, repo_id: str, private: bool = False, retries: int = 3, backoff: float = 2.0,
                 token: str | None = None):
        self.repo_id = repo_id
        self.private = private
        self.retries = retries
        self.backoff = backoff
        self.token = token
        self.results: list[PushResult] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def failures(self) -> list[PushResult]:
        return [result for result in self.results if not result.ok]

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def push(self, folder: str | Path, message: str, exclude: Callable[[Path], bool] | None = None) -> PushResult:
        """Push now and wait; never raises for Hub errors (see the result). `exclude(relative_path)` leaves files
        out."""
        snapshot = _snapshot(Path(folder), exclude)
        try:
            return self._push(Path(folder), snapshot, message)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def push_in_background(self, folder: str | Path, message: str,
                           exclude: Callable[[Path], bool] | None = None) -> bool:
        """Start pushing a snapshot of `folder` in a thread; False (and nothing started) while one is in flight."""
        with self._lock:
            if self.busy:
                logger.info("A push to %s is still running; skipping the push of %s", self.repo_id, folder)
                return False
            snapshot = _snapshot(Path(folder), exclude)

            def run() -> None:
                try:
                    self._push(Path(folder), snapshot, message)
                finally:
                    shutil.rmtree(snapshot, ignore_errors=True)

            self._thread = threading.Thread(target=run, name=f"push-{self.repo_id}", daemon=True)
            self._thread.start()
            return True

    def wait(self) -> None:
        """Wait for the background push, if any."""
        if self._thread is not None:
            self._thread.join()

    def _push(self, folder: Path, snapshot: Path, message: str) -> PushResult:
        from zoo.hub import push_folder

        result = PushResult(folder, self.repo_id)
        try:
            result.url = push_folder(snapshot, self.repo_id, private=self.private, commit_message=message,
                                     token=self.token, retries=self.retries, backoff=self.backoff)
        except PushError as error:
            result.error, result.attempts = error.reason, error.attempts
        except HubError as error:
            result.error, result.attempts = str(error).replace(str(snapshot), str(folder)), 1
        if result.error is not None:
            logger.warning("Pushing %s to '%s' failed after %d attempt(s): %s", folder, self.repo_id, result.attempts,
                           result.error)
        self.results.append(result)
        return result


def _snapshot(folder: Path, exclude: Callable[[Path], bool] | None = None) -> Path:
    """A temporary copy of `folder` made of hard links (copies where linking fails), next to it."""
    target = Path(tempfile.mkdtemp(prefix=f".push-{folder.name}-", dir=folder.parent))
    link_tree(folder, target, exclude)
    return target
