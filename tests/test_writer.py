"""Writing a firm on a real PostgreSQL: all or nothing, never twice."""

import numpy as np
import pytest

from app.database import as_array
from app.naming import Label
from app.runs import open_run
from app.schema import fix_embedding_dimension
from app.settings import RunSettings
from app.writer import AlreadyWritten, FirmResult, TopicResult, write_firm, write_firm_with_retry
from support import insert_corpus

DIM = 4


async def prepared(pool):
    await insert_corpus(pool, [
        {"firm_id": "F", "firm_name": "F Inc.", "doc_id": "d", "sentence": f"sentence {i}"} for i in range(6)
    ])
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, DIM)
        run = await open_run(conn, "r", RunSettings(), embedding_dim=DIM, backend={"clustering": "cpu"})
        ids = [r["sentence_id"] for r in await conn.fetch("SELECT sentence_id FROM sentences ORDER BY 1")]
    return run.run_id, np.array(ids, dtype=np.int64)


def firm_result(ids, *, labels=None):
    rng = np.random.default_rng(0)
    return FirmResult(
        "F", "F Inc.", "done",
        sentence_ids=ids,
        embeddings=rng.normal(size=(len(ids), DIM)).astype(np.float32),
        labels=np.array(labels if labels is not None else [0, 0, 0, 1, 1, -1]),
        topics=[
            TopicResult(0, ['frei"ght', "cost,s"], Label("Freight", "About freight.", "keywords"), 3, [int(ids[0])]),
            TopicResult(1, ["cloud"], Label("Cloud", "About cloud.", "llm"), 2, [int(ids[3])]),
        ],
        seconds={"embed": 0.1},
    )


async def counts(pool):
    async with pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("run_firms", "topics", "sentence_topics")}


async def test_a_firm_is_written_whole(pool):
    run_id, ids = await prepared(pool)
    async with pool.acquire() as conn:
        await write_firm(conn, run_id, firm_result(ids))
        rows = await conn.fetch(
            "SELECT st.sentence_id, t.topic_no, t.keywords, st.embedding FROM sentence_topics st"
            " LEFT JOIN topics t USING (topic_id) ORDER BY st.sentence_id"
        )
    assert await counts(pool) == {"run_firms": 1, "topics": 2, "sentence_topics": 6}
    assert [r["topic_no"] for r in rows] == [0, 0, 0, 1, 1, None]  # the outlier has no topic
    assert rows[0]["keywords"] == ['frei"ght', "cost,s"]  # quoting survives the array literal
    # Stored as 16-bit floats (halfvec): each value the nearest one, read back as float32.
    stored = as_array(rows[0]["embedding"])
    assert stored.dtype == np.float32
    assert np.array_equal(stored, firm_result(ids).embeddings[0].astype(np.float16).astype(np.float32))


async def test_a_failure_halfway_leaves_nothing_of_the_firm(pool):
    run_id, ids = await prepared(pool)
    broken = firm_result(np.concatenate([ids[:3], [999_999], ids[4:]]))  # no such sentence: FK fails mid-COPY
    async with pool.acquire() as conn:
        with pytest.raises(Exception, match="foreign key"):
            await write_firm(conn, run_id, broken)
    assert await counts(pool) == {"run_firms": 0, "topics": 0, "sentence_topics": 0}


async def test_a_firm_is_never_written_twice(pool):
    run_id, ids = await prepared(pool)
    async with pool.acquire() as conn:
        await write_firm(conn, run_id, firm_result(ids))
        with pytest.raises(AlreadyWritten):
            await write_firm(conn, run_id, firm_result(ids))
    assert await counts(pool) == {"run_firms": 1, "topics": 2, "sentence_topics": 6}


async def test_a_firm_another_worker_wrote_first_is_not_written_again(pool):
    # Two workers computed one firm (one lost its claim in a failover): the first write
    # stands, the second says so and writes nothing.
    run_id, ids = await prepared(pool)
    assert await write_firm_with_retry(pool, run_id, firm_result(ids), base_delay=0.01)
    assert not await write_firm_with_retry(pool, run_id, firm_result(ids, labels=[0, 1, 1, 1, 1, 1]), base_delay=0.01)
    assert await counts(pool) == {"run_firms": 1, "topics": 2, "sentence_topics": 6}
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sentence_topics WHERE topic_id IS NULL") == 1


async def test_a_dropped_connection_is_retried_and_the_firm_written_once(pool):
    run_id, ids = await prepared(pool)
    killed = []

    async def kill_writer_once(conn):
        # The first attempt's backend is terminated from another connection, mid-firm.
        if not killed:
            killed.append(conn.get_server_pid())
            async with pool.acquire() as other:
                await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())

    import app.writer as writer

    original = writer.insert_topics

    async def insert_then_maybe_die(conn, run_id_, result):
        topic_ids = await original(conn, run_id_, result)
        await kill_writer_once(conn)
        return topic_ids

    writer.insert_topics = insert_then_maybe_die
    try:
        await write_firm_with_retry(pool, run_id, firm_result(ids), base_delay=0.01)
    finally:
        writer.insert_topics = original
    assert killed
    assert await counts(pool) == {"run_firms": 1, "topics": 2, "sentence_topics": 6}
