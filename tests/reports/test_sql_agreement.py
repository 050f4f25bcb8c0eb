"""The rollups' SQL (PostgreSQL ``rebuild``) and their Python (the live write path) agree.

``BUCKET_SQL`` against :func:`abtest.stats.bucket_index` (the latency sketch's bucket) and
``SAMPLE_SQL`` against :func:`abtest.reports.rollups.in_sample` (the 1-in-32 unit sample), on
thousands of values each, edge values included, evaluated by real PostgreSQL; and the status
rules of :mod:`abtest.reports.statuses` as the SQL predicates render them.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, TEXT

from abtest.reports import statuses as ST
from abtest.reports.rollups import BUCKET_SQL, SAMPLE_SQL, SQL_PARAMS, in_sample
from abtest.stats import bucket_index
from abtest.stats.sketch import GAMMA, MIN_VALUE

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_url):  # type: ignore[no-untyped-def]
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def _latencies() -> list[float]:
    rng = np.random.default_rng(11)
    edges = [0.0, -1.0, -1e-9, 1e-12, MIN_VALUE, math.nextafter(MIN_VALUE, 0), math.nextafter(MIN_VALUE, 1),
             1.0, math.nextafter(1.0, 0), math.nextafter(1.0, 2), 0.5, 2.0, 1e6, 3.6e6, 8.64e7, 1e12]
    powers = []
    for k in range(-3000, 12000, 7):  # bucket boundaries gamma**k (~1e-3 ms .. ~2e5 ms) and their neighbours
        b = GAMMA ** k
        powers += [b, math.nextafter(b, 0), math.nextafter(b, math.inf)]
    drawn = list(rng.lognormal(5.5, 1.2, 3000)) + list(rng.uniform(0, 5, 1000)) + [float(i) for i in range(1, 2001)]
    return edges + powers + drawn


def _unit_ids() -> list[str]:
    rnd = random.Random(5)
    alphabets = ("abcdefghijklmnopqrstuvwxyz0123456789-_", "éèàüßøñç", "中文日本語한국어", "😀🚀✓€", " \t'\"\\%")
    ids = ["", "a", "'", "u0", "x" * 200, "é" * 100, "😀" * 50]
    ids += [f"user-{i}" for i in range(2000)] + [str(i) for i in range(1000)]
    for _ in range(3000):
        chars = "".join(alphabets[rnd.randrange(len(alphabets))] for _ in range(3))
        ids.append("".join(rnd.choice(chars) for _ in range(rnd.randint(1, 40))))
    return ids


def test_sketch_bucket_sql_matches_bucket_index(pg) -> None:  # type: ignore[no-untyped-def]
    values = _latencies()
    sql = text(f"SELECT {BUCKET_SQL.format(latency='x')} FROM unnest(:xs) WITH ORDINALITY AS t(x, i) ORDER BY i")
    sql = sql.bindparams(bindparam("xs", type_=ARRAY(DOUBLE_PRECISION)))
    got = [int(b) for (b,) in pg.execute(sql, {"xs": values, **SQL_PARAMS})]
    want = bucket_index(values).tolist()
    mismatches = [(x, g, w) for x, g, w in zip(values, got, want) if g != w]
    assert len(got) == len(values) > 7000 and not mismatches, mismatches[:10]


def test_unit_sample_sql_matches_in_sample(pg) -> None:  # type: ignore[no-untyped-def]
    ids = _unit_ids()
    sql = text(f"SELECT {SAMPLE_SQL.format(unit='u')} FROM unnest(:us) WITH ORDINALITY AS t(u, i) ORDER BY i")
    sql = sql.bindparams(bindparam("us", type_=ARRAY(TEXT)))
    got = [bool(s) for (s,) in pg.execute(sql, {"us": ids, **SQL_PARAMS})]
    want = [in_sample(u) for u in ids]
    assert len(got) == len(ids) > 6000 and got == want
    assert 0.02 < sum(want) / len(want) < 0.045  # about 1 in 32, both ways


@pytest.mark.parametrize("status", ["ok", "error", "timeout", "rejected", "unavailable", "cancelled"])
def test_status_rules_in_sql_match_python(pg, status) -> None:  # type: ignore[no-untyped-def]
    row = pg.execute(text(f"SELECT {ST.sql_error('s')}, {ST.sql_in_denominator('s')} FROM (SELECT :s AS s) AS t"),
                     {"s": status}).one()
    assert (bool(row[0]), bool(row[1])) == (ST.is_error(status), ST.in_denominator(status))
