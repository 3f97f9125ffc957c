"""Which offset of a partition may be committed: one past the longest run of completed offsets from the start.

Records complete out of order when several are processed at once; committing past an unfinished one would lose
it on a crash, so the commit point only moves over a contiguous completed prefix. Pure, no Kafka.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    def __init__(self) -> None:
        self._taken: deque[int] = deque()  # offsets handed out for processing, in order
        self._done: set[int] = set()
        self.commit_point: int | None = None  # next offset to consume after a restart
        self._committed: int | None = None  # what the broker has (as far as we know)
        self.last_taken: int | None = None  # a record at or below this one is already being handled

    def take(self, offset: int) -> None:
        if self.last_taken is not None and offset <= self.last_taken:
            raise ValueError(f"offset {offset} taken out of order (last {self.last_taken})")
        self._taken.append(offset)
        self.last_taken = offset

    def done(self, offset: int) -> None:
        self._done.add(offset)
        while self._taken and self._taken[0] in self._done:
            first = self._taken.popleft()
            self._done.discard(first)
            self.commit_point = first + 1

    @property
    def outstanding(self) -> int:
        """Offsets taken and not yet past the commit point (in flight, queued, or done behind a gap)."""
        return len(self._taken)

    def to_commit(self) -> int | None:
        """The commit point if it moved since the last `committed()`, else None."""
        if self.commit_point is None or self.commit_point == self._committed:
            return None
        return self.commit_point

    def committed(self, offset: int) -> None:
        self._committed = offset

    @property
    def last_committed(self) -> int | None:
        return self._committed
