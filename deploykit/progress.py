"""Step-by-step progress for long work: a spinner while a step runs, its duration when it ends."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape


class StepLog:
    """Prints each step (when given a console) and keeps every step's duration for the report."""

    def __init__(self, console: Console | None = None):
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, key: str, description: str) -> Iterator[None]:
        """Time one step; `description` is plain text (it may hold user paths), never rich markup."""
        description = escape(description)
        start = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(f"{description}…"):
                yield
        elapsed = time.perf_counter() - start
        self.seconds[key] = self.seconds.get(key, 0.0) + round(elapsed, 2)
        self.info(f"[green]✓[/] {description} [dim]({elapsed:.1f} s)[/]")

    def info(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)
