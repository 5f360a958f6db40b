"""What rollout and judge actors share: their names, and the error for a learner that went away."""

from __future__ import annotations

import os
import socket


class LearnerGone(RuntimeError):
    """The learner did not answer in time (it finished, died, or is unreachable)."""


def default_worker_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"
