"""A 60-second sliding window of requests and tokens against an rpm and a tpm limit (pure: time is passed in).

Used per upstream key by the scheduler and per client by ClientLimitsMiddleware. A request is recorded with its
estimated tokens; `settle` corrects the estimate with the real usage once it is known, as long as the entry is
still inside the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 60.0  # seconds: MegaLLM's limits are per minute


@dataclass(slots=True)
class SlidingWindow:
    rpm: int | None = None
    tpm: int | None = None
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [time, count]; a settle rewrites the count
    token_sum: float = 0.0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW
        requests, tokens = self.requests, self.tokens
        while requests and requests[0] <= horizon:
            requests.popleft()
        while tokens and tokens[0][0] <= horizon:
            self.token_sum -= tokens.popleft()[1]

    def ready_at(self, tokens: int, now: float) -> float:
        """When a request of `tokens` fits both limits (`now` if it fits now). Call `prune(now)` first."""
        at = now
        if self.rpm is not None and len(self.requests) >= self.rpm:
            at = max(at, self.requests[len(self.requests) - self.rpm] + WINDOW)
        if self.tpm is not None and self.token_sum + tokens > self.tpm and self.tokens:
            # Tokens expire oldest first: find when enough have left the window. A request larger than the whole
            # budget is allowed on an empty window, or it could never run.
            excess = self.token_sum + tokens - self.tpm
            for stamp, count in self.tokens:
                excess -= count
                if excess <= 0:
                    at = max(at, stamp + WINDOW)
                    break
            else:  # larger than the budget: it runs alone, once the window is empty
                at = max(at, self.tokens[-1][0] + WINDOW)
        return at

    def record(self, tokens: int, now: float) -> list[float]:
        """Count a request of `tokens` (an estimate) now; the returned entry is what `settle` corrects."""
        self.requests.append(now)
        entry = [now, float(tokens)]
        self.tokens.append(entry)
        self.token_sum += tokens
        return entry

    def settle(self, entry: list[float], tokens_used: int, now: float) -> None:
        """Replace an entry's estimate with the real usage, if it is still in the window."""
        if entry[0] > now - WINDOW:
            self.token_sum += tokens_used - entry[1]
            entry[1] = float(tokens_used)

    def headroom(self) -> float:
        """The smaller share left of the two budgets, 1.0 when unlimited."""
        left = [1.0]
        if self.rpm:
            left.append(1 - len(self.requests) / self.rpm)
        if self.tpm:
            left.append(1 - self.token_sum / self.tpm)
        return min(left)
