"""SIGINT/SIGTERM during training: finish the current step, save a checkpoint, exit cleanly.
A second signal stops at once."""

from __future__ import annotations

import logging
import signal
from types import FrameType, TracebackType

log = logging.getLogger("visattn.train.loop")


class StopSignals:
    """Context manager that records a stop request in ``received`` instead of dying.

    Outside the main thread (where Python cannot install handlers) it records nothing and
    leaves the handlers alone.

    Example:
        >>> with StopSignals() as stop:
        ...     stop.received is None
        True
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "%s received: finishing the current step, then saving a checkpoint", signal.Signals(signum).name
        )

    def __enter__(self) -> StopSignals:
        try:
            self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name
