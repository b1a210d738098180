"""Publishing the two files of a checkpoint set in one atomic step.

Two files cannot be renamed at once, so a set goes through a small journal folder:

1. both files are written (and fsynced) into ``.<stem>.set-tmp/`` beside the run's files;
2. that folder is renamed to ``.<stem>.set/`` -- the single commit step;
3. the files are moved from it into place and the folder is removed.

A crash before step 2 leaves the previous set untouched (the unfinished folder is thrown
away on recovery); a crash after it leaves a committed folder whose moves recovery finishes.
Either way ``<stem>.safetensors`` and ``<stem>.state.pt`` end up from the same save, never
one from each. Both files also carry the set's stamp (its step and a random token), and the
loader refuses a pair whose stamps differ -- files copied or edited by hand included.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from .._io import fsync_path
from .checkpoint import CheckpointError

WEIGHTS, STATE = ".safetensors", ".state.pt"
STAMP = "checkpoint_set"  # key of the stamp in the weights' description and in the state


def new_stamp(step: int) -> str:
    """A stamp unique to one save of a set: the step (for messages) and a random token."""
    return f"step {step}, set {secrets.token_hex(8)}"


def _pending(run_dir: Path, stem: str) -> Path:
    return run_dir / f".{stem}.set-tmp"


def _committed(run_dir: Path, stem: str) -> Path:
    return run_dir / f".{stem}.set"


def recover(run_dir: Path, stem: str) -> None:
    """Finish or discard a publication of ``stem`` that a crash interrupted (idempotent: a
    crash during recovery is recovered the next time)."""
    pending, committed = _pending(run_dir, stem), _committed(run_dir, stem)
    if pending.is_dir():  # never committed: the previous set is still whole
        shutil.rmtree(pending)
        fsync_path(run_dir)
    if committed.is_dir():
        for suffix in (STATE, WEIGHTS):
            part = committed / f"{stem}{suffix}"
            if part.is_file():
                os.replace(part, run_dir / part.name)
        fsync_path(run_dir)
        committed.rmdir()
        fsync_path(run_dir)


def recover_all(run_dir: Path) -> None:
    """``recover`` every interrupted publication in ``run_dir``."""
    journals = [p for p in run_dir.glob(".*.set*") if p.is_dir() and p.name.endswith((".set", ".set-tmp"))]
    stems = {p.name[1:].removesuffix(".set-tmp").removesuffix(".set") for p in journals}
    for stem in sorted(stems):
        recover(run_dir, stem)


def publish(run_dir: Path, stem: str, write: Callable[[Path, Path], None]) -> None:
    """Publish a set: ``write(weights_path, state_path)`` writes both files (to a journal
    folder), then they replace ``<stem>.safetensors`` and ``<stem>.state.pt`` together."""
    recover(run_dir, stem)
    pending, committed = _pending(run_dir, stem), _committed(run_dir, stem)
    pending.mkdir()
    try:
        write(pending / f"{stem}{WEIGHTS}", pending / f"{stem}{STATE}")
        fsync_path(pending)
    except BaseException:
        shutil.rmtree(pending, ignore_errors=True)
        raise
    os.replace(pending, committed)  # the commit: from here on the new set wins
    fsync_path(run_dir)
    recover(run_dir, stem)


def check_stamps(weights_path: Path, weights_stamp: object, state_path: Path, state_stamp: object) -> None:
    """Refuse a weights file and a state file that were not saved together."""
    if weights_stamp != state_stamp:
        raise CheckpointError(
            f"{state_path} ({state_stamp or 'no stamp'}) does not belong to {weights_path} "
            f"({weights_stamp or 'no stamp'}): they were not saved together"
        )
