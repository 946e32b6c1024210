"""Relay: a staged file's batches (upsert, merge) taken in turns by two connections.

A batch of a staged file is two statements of very different cost on the server: the COPY
into the connection's stage and the merge into the target (two thirds of the time). Batches
must merge in file order (the last occurrence of a key wins, across batches too), but
nothing orders their COPYs: so while one connection merges batch k, an idle worker's
connection stages batch k+1 in its own transaction and merges it as soon as batch k has
committed. Measured on 2 cores, 1,000,000 rows half of whose keys exist (bench
ingestd_upsert_csv against ingestd_upsert_c1): 5-15% less wall time, 0.3-1.2 s more
server CPU.

Every batch is still one transaction with its manifest checkpoint, committed in file
order, so a crash resumes exactly as before. The owner loads alone until a helper joins.
A batch's failure stops the batches after it before their merge (they roll back) and lets
those before it commit; the owner raises the earliest failure, the one a single
connection would have met. Not used where the helper's open transaction
could block the owner's: DDL on the target during a batch (schema evolution,
create_partitions), Citus's write slots, or snapshots older than a statement (an isolation
level above read committed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys

from ingestd.db.connection import Connection
from ingestd.db.merge import keep_alive, reads_committed
from ingestd.db.stage import create_stage
from ingestd.exceptions import FileError, IngestdError, Interrupted
from ingestd.load import BatchLoader, ReadAhead, Tally
from ingestd.logs import bound
from ingestd.model import Help

log = logging.getLogger(__name__)


class _Stopped(IngestdError):
    """The other connection's batch failed: this one rolls back before its merge."""


def _stopped_at_once() -> Interrupted:
    return Interrupted("stopped while loading; resumes on the next run")


def may_relay(loader: BatchLoader) -> bool:
    """Whether a file's batches may be shared with a helper (see the module docstring)."""
    s, contract = loader.ctx.settings, loader.job.contract
    return (
        loader.stage is not None
        and loader.drift is None
        and not loader.target.citus
        and not contract.create_partitions
        and s.concurrency > 1
        and loader.ctx.offer is not None
    )


class Relay:
    """The batches of one file, handed out in file order to the owner and at most one
    helper; batch k merges only once batch k-1 has committed."""

    def __init__(self, owner: BatchLoader, pieces: ReadAhead, tally: Tally):
        self._owner = owner
        self._pieces = pieces
        self._tally = tally
        self._taking = asyncio.Lock()  # one participant at a time takes the next piece
        self._taken = 0  # pieces handed out: the next one's number
        self._committed = 0  # batches done, in order: batch k may merge when this is k
        self._moved = asyncio.Event()  # set (and replaced) when a batch ends or one fails
        self._ended = False  # the pieces ran out
        self._offered = False
        self._helping = False  # a helper has joined (at most one)
        self._idle = asyncio.Event()
        self._idle.set()
        self.error: BaseException | None = None
        self._failed_at = 0  # the number of the batch whose failure is self.error
        # Batch k's checkpoint may end the file only if no piece was taken after it.
        tally.last = lambda: self._taken == self._committed + 1 and pieces.exhausted()

    async def run(self) -> None:
        """Load the file's batches on the owner's connection, with a helper if one joins."""
        try:
            await self._lane(self._owner, owner=True)
        except _Stopped:
            pass  # the helper's batch failed first: its error is the file's
        except asyncio.CancelledError:
            self._fail(_stopped_at_once(), -1)
            raise
        except Exception as exc:  # raised below, unless a batch before it failed too
            self._fail(exc, sys.maxsize)
        finally:
            self._ended = True
            await self._idle.wait()
        if self.error is not None:
            raise self.error

    async def help(self, conn: Connection, worker_id: str) -> bool:
        """Take batches in turn with the owner on this connection until the file's pieces
        run out; False if the connection may be unusable."""
        if self._ended or self._helping or self.error is not None:
            return True
        self._helping = True
        self._idle.clear()
        try:
            with bound(file=str(self._owner.job.name), worker_id=worker_id):
                return await self._help(conn, worker_id)
        finally:
            self._idle.set()

    async def _help(self, conn: Connection, worker_id: str) -> bool:
        assert self._owner.stage is not None  # noqa: S101 - may_relay checked
        try:
            # This connection's own isolation too: one made after a change of the
            # database's default may differ from the owner's.
            if not await reads_committed(conn):
                return True
            await create_stage(conn, self._owner.target, self._owner.stage)
        except Exception as exc:  # not joined: the owner goes on alone
            log.warning("relay_not_joined", extra={"error": str(exc)})
            return False
        log.info("relay_joined", extra={"rows_committed": self._tally.rows})
        loader = dataclasses.replace(
            self._owner, conn=conn, worker_id=worker_id, partitions_made=[], partitions_tried=set()
        )
        try:
            await self._lane(loader, owner=False)
        except _Stopped:
            return True  # the batch in hand rolled back; the owner reports the file
        except asyncio.CancelledError:
            self._fail(_stopped_at_once(), -1)
            raise
        except FileError:
            return True  # the file's fault (relayed by _lane): the connection is fine
        except Exception:  # relayed by _lane: the owner raises it from run()
            return False
        return True

    async def _lane(self, loader: BatchLoader, *, owner: bool) -> None:
        while True:
            async with self._taking:
                if self._ended or self.error is not None:
                    return
                try:
                    piece = await anext(self._pieces)
                except StopAsyncIteration:
                    self._ended = True
                    return
                except Exception as exc:  # NotRaw or a read error: after the batches before
                    self._fail(exc, self._taken)
                    return
                number = self._taken
                self._taken += 1
            if owner and not self._offered:
                await self._offer(loader.conn)

            try:
                turn = functools.partial(self._turn, number, loader.conn)
                await loader.batch(piece, self._tally, turn)
            except _Stopped:
                raise
            except Exception as exc:  # a cancellation is run()'s or _help()'s to record
                self._fail(exc, number)
                raise
            self._committed = number + 1
            self._wake()

    async def _turn(self, number: int, conn: Connection) -> None:
        """Wait until batch `number` may merge: every batch before it has committed. If one
        of those failed, this one rolls back; a later batch's failure lets it commit, as on
        one connection, where it would have committed before the later one was read."""
        # The waiting batch's transaction is idle meanwhile: ingestd's sessions end one idle
        # for the statement timeout (a vanished client), and the batch ahead may take
        # longer than that in all (many statements, e.g. sorting out bad rows).
        nudge_s = self._owner.ctx.settings.statement_timeout_s / 3
        while self._committed != number:
            if self.error is not None and self._failed_at < number:
                raise _Stopped("stopped: a batch before this one failed")
            try:
                await asyncio.wait_for(self._moved.wait(), nudge_s)
            except TimeoutError:
                await keep_alive(conn)

    async def _offer(self, conn: Connection) -> None:
        """Ask an idle worker to join once the file is seen to hold a second piece."""
        self._offered = True
        offer = self._owner.ctx.offer
        if offer is None or self._pieces.exhausted() or not await reads_committed(conn):
            return
        offer(Help(self))

    def _fail(self, error: BaseException, number: int) -> None:
        """Record batch `number`'s failure (-1: the whole load's, a cancellation). The
        file's error is the earliest batch's, the one a single connection would meet."""
        if self.error is None or number < self._failed_at:
            self.error, self._failed_at = error, number
        self._wake()  # a participant waiting for its turn then rolls its batch back

    def _wake(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()
