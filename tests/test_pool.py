from __future__ import annotations

from collections.abc import Callable

import pytest

from ropd.rubric.pool import PoolItem, Source, blind_pool, chunk_pool, labelled_pool, strip_think, unshuffle

TEACHER = ["t0 answer", "t1 answer"]
STUDENT = ["s0", "s1 longer answer", "s2", "s3"]


def test_shuffle_is_deterministic_and_complete() -> None:
    a = blind_pool("g1", TEACHER, STUDENT)
    b = blind_pool("g1", list(TEACHER), list(STUDENT))
    assert a == b
    assert sorted((it.source, it.index) for it in a) == sorted(
        [(Source.TEACHER, i) for i in range(2)] + [(Source.STUDENT, i) for i in range(4)]
    )


def test_shuffle_depends_on_group_and_hides_source_order() -> None:
    orders = {tuple((it.source, it.index) for it in blind_pool(f"g{i}", TEACHER, STUDENT)) for i in range(20)}
    assert len(orders) > 5  # not a fixed permutation
    teacher_first = sum(
        blind_pool(f"g{i}", TEACHER, STUDENT)[0].source == Source.TEACHER for i in range(200)
    )
    assert 20 < teacher_first < 120  # roughly 2/6 of the time, never always


def test_unshuffle_inverts_the_shuffle() -> None:
    pool = blind_pool("g7", TEACHER, STUDENT)
    # a row that encodes its own (source, index), so we can see where it lands
    rows = [[it.source == Source.TEACHER, *[it.index == k for k in range(4)]] for it in pool]
    back = unshuffle(pool, rows)
    assert back[Source.TEACHER] == [[True] + [k == i for k in range(4)] for i in range(2)]
    assert back[Source.STUDENT] == [[False] + [k == i for k in range(4)] for i in range(4)]


def test_unshuffle_rejects_wrong_row_count() -> None:
    pool = blind_pool("g", TEACHER, STUDENT)
    with pytest.raises(ValueError, match="5 verdict rows for a pool of 6"):
        unshuffle(pool, [[True]] * 5)


def test_labelled_pool_order() -> None:
    pool = labelled_pool(TEACHER, STUDENT)
    assert [(it.source, it.index) for it in pool][:3] == [
        (Source.TEACHER, 0), (Source.TEACHER, 1), (Source.STUDENT, 0)
    ]


@pytest.mark.parametrize(("raw", "expected"), [
    ("plain answer", "plain answer"),
    ("<think>scratch</think>final", "final"),
    ("<think>a</think>mid</think>  last ", "last"),
    ("no close <think> tag here", "no close <think> tag here"),
    ("</think>", ""),
])
def test_strip_think(raw: str, expected: str) -> None:
    assert strip_think(raw) == expected


def test_pool_strips_think_before_judging() -> None:
    pool = blind_pool("g", ["<think>secret teacher notes</think>T"], ["S"])
    assert {it.text for it in pool} == {"T", "S"}


def items(*sizes: int) -> list[PoolItem]:
    return [PoolItem(source=Source.STUDENT, index=i, text="x" * n) for i, n in enumerate(sizes)]


def fits_in(budget: int) -> Callable[[list[PoolItem]], bool]:
    return lambda chunk: sum(len(it.text) for it in chunk) <= budget


def test_chunking_respects_budget_and_order() -> None:
    pool = items(40, 40, 40, 10, 90, 5)
    chunks = chunk_pool(pool, fits_in(100))
    assert [[it.index for it in c] for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    assert all(sum(len(it.text) for it in c) <= 100 for c in chunks)
    assert [it for c in chunks for it in c] == pool


def test_oversized_answer_gets_its_own_chunk() -> None:
    chunks = chunk_pool(items(10, 500, 10), fits_in(100))
    assert [[it.index for it in c] for c in chunks] == [[0], [1], [2]]


def test_single_chunk_when_it_fits() -> None:
    seen: list[int] = []

    def fits(chunk: list[PoolItem]) -> bool:
        seen.append(len(chunk))
        return True

    assert chunk_pool(items(10, 10, 10), fits) == [items(10, 10, 10)]
    assert seen == [3]  # the whole pool is measured once, not grown answer by answer
    assert chunk_pool([], fits) == []
