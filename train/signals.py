"""Preemption signals: SIGTERM and SIGUSR1 (and submitit's requeue signal) ask the loop to save and stop.

The handler only records the request; the loop acts on it at the next optimizer-step boundary, where the state
is consistent and every rank can agree (the request travels in the loop's per-step all-reduce).
"""
from __future__ import annotations

import os
import signal
import threading


def stop_signals() -> set[int]:
    sigs = {signal.SIGTERM, signal.SIGUSR1}
    if "SUBMITIT_EXECUTOR" in os.environ:  # submitit requeues on this one (USR2 unless configured otherwise)
        sigs.add(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")))
    return sigs


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """A DataLoader worker's init: Slurm signals every process of a job step, loader workers included, and a worker
    that inherited submitit's handler would requeue the job before the main process saved its checkpoint (or die,
    and take the main process with it). Only the main process acts on a stop request."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def chain(self) -> None:
        """After the checkpoint is saved, hand the signal to the handler that was there before (submitit's
        requeues the job); plain Python handlers only, the default action would kill the process."""
        previous = self._previous.get(self.signum)
        if callable(previous):
            previous(self.signum, None)
