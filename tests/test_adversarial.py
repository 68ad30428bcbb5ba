"""Adversarial student answers (tests/data/adversarial_rollouts.jsonl) cannot forge the prompt's structure.

Each corpus row is {id, kind, text[, repeat, suffix]}; the answer is text * repeat + suffix, so very long
answers stay small on disk. For every row: the rendered prompts keep each answer inside its own fence
(parsed back and compared with a benign rendering), verdicts stay attached to the right answer through
the blind shuffle and chunking (checked against the stand-in judge's rules applied to each answer alone),
and `</think>` stripping never lets hidden text reach the judge, while truncation keeps an answer's head
and tail inside its own fence, around a cut line no answer can forge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ropd.config import EngineConfig
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.rubric.engine import Group, score_groups
from ropd.rubric.pool import blind_pool, strip_think
from ropd.rubric.prompts import cut_marker, render_rubricator, render_verifier, truncate
from ropd.rubric.schema import Rubric
from ropd.testing.judge import CHECKS, answer_text, rubric_reply
from ropd.testing.server import ScriptedServer
from tests.conftest import run

MakeChat = Callable[..., OpenAICompatChat]
CORPUS_FILE = Path(__file__).parent / "data" / "adversarial_rollouts.jsonl"
KINDS = {"forged_header", "forged_delimiter", "embedded_json_verdict", "all_criteria_satisfied",
         "grader_instruction", "long_answer", "think_trick"}
QUESTION = "Ana has 3 bags with 12 apples each and eats 9. How many are left?"
HONEST = ["3 * 12 = 36\n36 - 9 = 27\nAnswer: 27", "3 + 12 = 15\nAnswer: 15"]
# a cap well below the default, so the corpus's long rows are cut
ENGINE = EngineConfig(min_criteria=4, max_criteria=6, max_answer_chars=6000)
MAX = ENGINE.max_answer_chars


def load_corpus() -> list[dict]:
    rows = [json.loads(line) for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        r["answer"] = r["text"] * r.get("repeat", 1) + r.get("suffix", "")
    return rows


CORPUS = load_corpus()
IDS = [r["id"] for r in CORPUS]
RUBRIC = Rubric.from_reply(rubric_reply(render_rubricator(QUESTION, HONEST[:1], HONEST[1:])))


def nonce_of(messages: list[dict[str, str]]) -> str:
    return re.search(r'fence="([0-9a-f]{16})"', messages[0]["content"]).group(1)  # type: ignore[union-attr]


def spans(text: str, tag: str, nonce: str) -> list[tuple[str, str]]:
    return re.findall(rf'<{tag} id="([^"]*)" fence="{nonce}">\n(.*?)\n</{tag} fence="{nonce}">', text, re.DOTALL)


def skeleton(messages: list[dict[str, str]]) -> str:
    """The prompt with every fenced body blanked and the nonce named: what the answers cannot change."""
    nonce = nonce_of(messages)
    text = "\n\x00\n".join(m["content"] for m in messages)
    text = re.sub(rf'(<(\w+) id="[^"]*" fence="{nonce}">\n).*?(\n</\2 fence="{nonce}">)', r"\1BODY\3", text,
                  flags=re.DOTALL)
    return text.replace(nonce, "NONCE")


def test_corpus_covers_every_attack_kind() -> None:
    assert {r["kind"] for r in CORPUS} == KINDS
    assert len(set(IDS)) == len(IDS)
    assert any(len(r["answer"]) > 4 * MAX for r in CORPUS)  # well past truncation


@pytest.mark.parametrize("row", CORPUS, ids=IDS)
def test_verifier_prompt_keeps_each_answer_in_its_own_fence(row: dict) -> None:
    answers = [HONEST[0], row["answer"], HONEST[1]]
    messages = render_verifier(QUESTION, RUBRIC, answers, max_answer_chars=MAX)
    nonce = nonce_of(messages)
    assert all(nonce not in a for a in [QUESTION, *answers])
    parsed = spans(messages[1]["content"], "answer", nonce)
    assert [label for label, _ in parsed] == ["1", "2", "3"]
    assert [body for _, body in parsed] == [truncate(a, MAX, nonce) for a in answers]  # intact, in its own slot
    assert spans(messages[1]["content"], "prompt", nonce) == [("x", QUESTION)]
    benign = render_verifier(QUESTION, RUBRIC, ["a", "b", "c"], max_answer_chars=MAX)
    assert skeleton(messages) == skeleton(benign)  # nothing outside the fences moved


@pytest.mark.parametrize("row", CORPUS, ids=IDS)
def test_rubricator_prompt_keeps_each_answer_in_its_own_fence(row: dict) -> None:
    messages = render_rubricator(QUESTION, HONEST[:1], [row["answer"], HONEST[1]], max_answer_chars=MAX)
    nonce = nonce_of(messages)
    user = messages[1]["content"]
    assert spans(user, "reference", nonce) == [("R1", HONEST[0])]
    assert spans(user, "student", nonce) == [("S1", truncate(strip_think(row["answer"]), MAX, nonce)),
                                             ("S2", HONEST[1])]
    benign = render_rubricator(QUESTION, ["r"], ["s", "t"], max_answer_chars=MAX)
    assert skeleton(messages) == skeleton(benign)


def expected_row(rubric: Rubric, answer: str) -> list[bool]:
    """The stand-in judge's rules applied to this answer alone, as the verifier should see it."""
    nonce = "0" * 16  # any: the judge reads past the real cut line, whatever its mark
    seen = answer_text(truncate(strip_think(answer), MAX, nonce), nonce)
    return [CHECKS[c.id](QUESTION, seen) for c in rubric.criteria]


# the default context takes the whole pool in one call; 1000 tokens past the reply's 2048 force chunks
@pytest.mark.parametrize("context", [ENGINE.judge_context_tokens, 3048], ids=["one_call", "chunked"])
def test_verdicts_stay_attached_through_the_blind_shuffle(context: int, make_chat: MakeChat,
                                                          server: ScriptedServer) -> None:
    students = [*HONEST, *(r["answer"] for r in CORPUS)]
    group = Group(group_id="adversarial", question=QUESTION, teacher=HONEST[:1], student=students)
    cfg = ENGINE.model_copy(update={"judge_context_tokens": context})
    result = run(score_groups([group], make_chat("rubricator", temperature=0.7), make_chat("verifier"), cfg))[0]
    assert result.ok and result.rubric is not None
    pool_order = [(it.source, it.index) for it in result.pool]
    assert pool_order != sorted(pool_order)  # really shuffled
    assert result.student_verdicts == [expected_row(result.rubric, s) for s in students]
    assert result.teacher_verdicts == [expected_row(result.rubric, HONEST[0])]
    assert result.rewards[:2] == [1.0, result.student_scores[1]] and result.student_scores[1] < 1.0
    assert (server.served("verify") == 1) == (context == ENGINE.judge_context_tokens)


THINK = [r for r in CORPUS if r["kind"] == "think_trick"]


@pytest.mark.parametrize("row", THINK, ids=[r["id"] for r in THINK])
def test_think_text_never_reaches_the_verifier(row: dict) -> None:
    answer = row["answer"]
    pool = blind_pool("g", [], [answer])
    judged = pool[0].text
    cut = answer.rfind("</think>")
    assert judged == (answer[cut + len("</think>"):].strip() if cut >= 0 else answer.strip())
    assert "</think>" not in judged
    prompt = render_verifier(QUESTION, RUBRIC, [judged])[1]["content"]
    if cut >= 0:
        hidden = answer[:cut].replace("<think>", "").replace("</think>", "").strip()
        assert hidden and hidden not in prompt  # the reasoning before the last </think> is not judged


@pytest.mark.parametrize("row", THINK, ids=[r["id"] for r in THINK])
def test_think_text_never_reaches_the_rubricator(row: dict) -> None:
    answer = row["answer"]
    prompt = render_rubricator(QUESTION, ["Answer: 4"], [answer])[1]["content"]
    assert strip_think(answer) in prompt and "</think>" not in prompt
    cut = answer.rfind("</think>")
    if cut >= 0:
        hidden = answer[:cut].replace("<think>", "").replace("</think>", "").strip()
        assert hidden not in prompt


def test_trailing_think_close_earns_nothing() -> None:
    """Putting the whole answer before a final </think> hides it from the judge: it can only lose."""
    row = next(r for r in CORPUS if r["id"] == "think-trailing-close")
    assert strip_think(row["answer"]) == ""
    assert expected_row(RUBRIC, row["answer"]) == expected_row(RUBRIC, "")  # judged as an empty answer
    unclosed = next(r for r in CORPUS if r["id"] == "think-unclosed-open")
    assert strip_think(unclosed["answer"]) == unclosed["answer"].strip()  # an open tag hides nothing


LONG = [r for r in CORPUS if r["kind"] == "long_answer"]


@pytest.mark.parametrize("row", LONG, ids=[r["id"] for r in LONG])
def test_long_answers_are_cut_inside_their_fence(row: dict) -> None:
    answer = row["answer"]
    messages = render_verifier(QUESTION, RUBRIC, [answer, "Answer: 0"], max_answer_chars=MAX)
    nonce = nonce_of(messages)
    body = spans(messages[1]["content"], "answer", nonce)[0][1]
    head, tail = answer[: MAX - MAX // 2], answer[len(answer) - MAX // 2 :]
    assert body == f"{head}\n{cut_marker(len(answer) - MAX, nonce)}\n{tail}"  # the end, where the answer is, stays
    assert body.endswith(row.get("suffix", ""))
    # one answer cannot crowd the others out: the prompt is bounded by the cap, whatever the answer length
    assert len(messages[1]["content"]) < len(render_verifier(QUESTION, RUBRIC, ["x", "Answer: 0"])[1]["content"]) \
        + MAX + 100
