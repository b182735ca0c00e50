"""An append looks up the identities already journaled (ledger/appends.py `unseen`) through the journal's
partial indexes (`... WHERE kind = 'reward'`). asyncpg prepares every statement, and PostgreSQL switches a
prepared statement to a generic plan after a few runs: were the kind a bind parameter there, no partial
index would match, and each append would scan the whole journal (a bench build on PostgreSQL slowed from
3,000 to 250 entries/s past 200,000 entries). So the kind is in the statement's text."""

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
        await ledger.append([journal.reward(address(1), 1, job_id=h32(1), stage=0, work_units=1)])
        for number, statement in enumerate(recorder.statements):
            async with ledger.transaction() as tx:
                compiled = statement.compile(dialect=tx.conn.dialect, compile_kwargs={"render_postcompile": True})
                values = ", ".join(repr(compiled.params[name]) for name in compiled.positiontup)
                await tx.conn.exec_driver_sql(f"PREPARE lookup{number} AS {compiled}")
                await tx.conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
                await tx.conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a 1-row table: scan only if no index fits
                plan = (await tx.conn.exec_driver_sql(f"EXPLAIN EXECUTE lookup{number}({values})")).scalars().all()
                await tx.conn.exec_driver_sql(f"DEALLOCATE lookup{number}")
            assert "Index" in plan[0] and "journal_" in plan[0] and not any("Seq Scan" in line for line in plan), plan
