"""Stop requests: SIGTERM (a scheduler preempting or timing out the job) and Ctrl-C.

The handler only records the request (`signal_name`); at each step boundary the training loop makes
all ranks agree on it (one all-reduce, shared with the non-finite check: loop._agree) so that they
save the same checkpoint together.
A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import sys


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
        self.signal_name = self.signal_name or name
        print(
            f"\n{name} received: stopping at the end of this step and saving a checkpoint "
            "(press Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by this signal (128 + its number), so schedulers and
        scripts see that the run did not finish."""
        return 128 + int(getattr(signal, self.signal_name or "SIGTERM"))
