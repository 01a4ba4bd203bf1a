"""How the launcher asks the trainer to checkpoint and stop, and how the trainer answers: two files.

A signal cannot carry this: under `accelerate launch` on several GPUs, torchrun's agent answers SIGTERM by
killing its workers 30 s later, too soon to write a large checkpoint. So the launcher keeps the signal to itself
and leaves a request file that every rank looks for at each step boundary."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import contract
from .records import read_record, write_record


@dataclass(frozen=True)
class StopAnswer:
    """What the trainer did when asked: the step it stopped after and the checkpoint it wrote (None before the
    first step, when there is nothing to save)."""

    step: int
    checkpoint: str | None


@dataclass(frozen=True)
class StopFiles:
    request: Path
    answer: Path

    @classmethod
    def in_dir(cls, state_dir: Path) -> StopFiles:
        return cls(state_dir / "stop.request", state_dir / "stop.answer.json")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> StopFiles | None:
        request, answer = contract.STOP_REQUEST.read(environ), contract.STOP_ANSWER.read(environ)
        if request is None or answer is None:
            return None
        return cls(request, answer)

    def environment(self) -> dict[str, str]:
        return {contract.STOP_REQUEST.name: str(self.request), contract.STOP_ANSWER.name: str(self.answer)}

    def clear(self) -> None:
        """A request or answer left by an earlier run must not stop or explain this one."""
        self.request.unlink(missing_ok=True)
        self.answer.unlink(missing_ok=True)

    def ask(self) -> None:
        self.request.parent.mkdir(parents=True, exist_ok=True)
        self.request.touch()

    def asked(self) -> bool:
        return self.request.exists()

    def write_answer(self, answer: StopAnswer) -> None:
        write_record(answer, self.answer)

    def read_answer(self) -> StopAnswer | None:
        return read_record(StopAnswer, self.answer)
