"""An append looks up the identities already journaled (ledger/appends.py `unseen`) through the journal's
unique partial indexes (`ux_journal_reward ... WHERE kind = 'reward'`). asyncpg prepares every statement, and
PostgreSQL switches a prepared statement to a generic plan after a few runs: with the kind bound no partial
index fits (a seq scan), with the keys bound it chose the partial index on seq and read every entry of the
kind; a bench build on PostgreSQL slowed from 3,000 to 250 entries/s past 200,000 entries. So the lookups
are written out in full and planned for their own values, whatever the plan cache does."""

from ledger import appends, journal
from ledger.store import Ledger
from tests.ledger.helpers import address, h32


class _Recorder:
    """Stands in for a connection: keeps the statements `unseen` runs, answers no rows."""

    def __init__(self) -> None:
        self.statements = []

    async def execute(self, statement):
        self.statements.append(statement)
        return []


async def test_the_identity_lookups_use_the_partial_indexes_under_a_generic_plan(pg_url):
    recorder = _Recorder()
    await appends.unseen(recorder, [journal.reward(address(1), 1, job_id=h32(1), stage=0, work_units=1),
                                    journal.sample(h32(1), h32(2))])
    assert len(recorder.statements) == 2
    async with await Ledger.open(pg_url) as ledger:
        await ledger.append([entry for job in range(10, 1010) for entry in (
            journal.reward(address(1), 1, job_id=h32(job), stage=0, work_units=1), journal.sample(h32(job), h32(job)))])
        for number, statement in enumerate(recorder.statements):
            async with ledger.transaction() as tx:
                compiled = statement.compile(dialect=tx.conn.dialect, compile_kwargs={"render_postcompile": True})
                values = ", ".join(repr(compiled.params[name]) for name in compiled.positiontup)
                await tx.conn.exec_driver_sql(f"PREPARE lookup{number} AS {compiled}")
                execute = f"EXECUTE lookup{number}" + (f"({values})" if values else "")
                await tx.conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
                plan = (await tx.conn.exec_driver_sql(f"EXPLAIN {execute}")).scalars().all()
                await tx.conn.exec_driver_sql(f"DEALLOCATE lookup{number}")
            assert "Index Only Scan using ux_journal_" in plan[0], plan  # the unique index on the identity
