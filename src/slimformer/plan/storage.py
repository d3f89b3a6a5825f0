"""OUT/study.db as an Optuna storage whose trial-state changes hold a file lock.

Optuna takes an enqueued (WAITING) trial by reading its state and then writing RUNNING; on SQLite
that read is not locked (SELECT ... FOR UPDATE is a no-op there), so two workers could both take
trial 0 and both run it (seen under load: four processes asking at once took 54 distinct of 60
enqueued trials). The lock makes the read and the write one step. A module of its own (importing
Optuna) so the class is importable by name: Ray pickles the storage to its workers."""
from __future__ import annotations

from pathlib import Path

import optuna

from ..models.saving import flock


class LockedStorage(optuna.storages.RDBStorage):
    def __init__(self, url: str, lock: str):
        super().__init__(url)
        self.lock = lock

    def set_trial_state_values(self, trial_id, state, values=None):
        with flock(Path(self.lock)):
            return super().set_trial_state_values(trial_id, state, values)
