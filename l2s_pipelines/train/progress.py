"""Training progress: a tqdm bar on a terminal, plain log lines otherwise; JSONL metrics log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from l2s_pipelines.system import terminal_bar


class Progress:
    """Show progress of steps ``start..total``: tqdm when stderr is a tty, otherwise one line every
    ``every`` steps (and at the last step) on ``stream``."""

    def __init__(self, total: int, start: int = 0, *, every: int = 10, stream=None, tty: bool | None = None):
        self.total, self.every = total, max(1, every)
        self.stream = stream or sys.stderr
        tty = self.stream.isatty() if tty is None else tty
        self.bar = terminal_bar(total, initial=start, stream=self.stream) if tty else None

    def update(self, step: int, record: dict) -> None:
        """``step``: index of the step just done (0-based); ``record``: its metrics."""
        shown = {k: v for k, v in record.items() if isinstance(v, float) and k != "time"}
        text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text, refresh=False)
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            print(f"step {step + 1}/{self.total} {record.get('phase', '')} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog:
    """Append-only JSONL log (one record per step). ``truncate_after(step)`` drops records of
    steps ``>= step`` (used when resuming from a checkpoint taken before them)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def reset(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            self.reset()
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] < step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
