"""Cost accounting: the tokens and USD a run paid, per role, round and stage; estimates for the budget.

The ledger is the call cache itself. Every row there records its call's usage and the run, round
and stage that first paid for it (`CallTag`); a replay never re-tags a row. So spend survives
kill -9 (a row is written the moment its reply arrives), a resumed stage is not charged again for
the calls it replays, and a call another run paid for costs this run nothing. Prices come from the
params as they are now (`RoleConfig.price`): repricing re-prices the past without asking anything.

Estimates, for `budget.max_usd` and `ropd cost estimate`, per judge stage and round:
- from history: the mean spend of that stage over the run's other rounds that paid for any of its calls;
- otherwise from request sizes: per expected call, (its prompt's characters) / 4 input tokens (the
  `ChatRequest.est_tokens` rule) and the role's whole `max_tokens` as output, at the role's price.
  That is an upper estimate: replies rarely use their whole cap.
A stage part-done (killed, then resumed) is charged only for the share of its expected calls not yet paid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from ropd.config import Price, RoleConfig
from ropd.llm.cache import CallCache, CallTag, TokenCounts

if TYPE_CHECKING:
    from ropd.params import Params
    from ropd.rubric.engine import Group

CHARS_PER_TOKEN = 4  # as ChatRequest.est_tokens
STAGE_ROLE = {"teacher": "teacher", "mine": "rubricator", "verify": "verifier"}
ROLES = ("teacher", "rubricator", "verifier")
RoundSel = int | Literal["any"] | None  # a round, "any" (all rounds and run-level stages), None (run-level only)


def usd_text(usd: float | None) -> str:
    """Cents for dollars, four significant digits below a dollar (a small run costs fractions of a cent)."""
    if usd is None:
        return "–"
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.4g}"


def role_config(params: Params, role: str) -> RoleConfig:
    return params.teacher.role if role == "teacher" else getattr(params, role)


class RoleSpend(TokenCounts):
    """Paid usage of one role with its price applied; `usd` is None when the role has no price."""

    usd: float | None = None

    def __add__(self, other: RoleSpend) -> RoleSpend:
        counts = {k: getattr(self, k) + getattr(other, k) for k in TokenCounts.model_fields}
        usd = None if self.usd is None and other.usd is None else (self.usd or 0.0) + (other.usd or 0.0)
        return RoleSpend(**counts, usd=usd)


def priced(counts: TokenCounts, price: Price | None) -> RoleSpend:
    """Reasoning tokens are part of `tokens_out` and billed as output; cached tokens part of `tokens_in`."""
    usd = None if price is None else price.usd(counts.tokens_in, counts.tokens_cached, counts.tokens_out)
    return RoleSpend(**{k: getattr(counts, k) for k in TokenCounts.model_fields}, usd=usd)


class Ledger:
    """One run's paid calls, from the call cache, priced with the params' current prices."""

    def __init__(self, params: Params, rows: list[tuple[CallTag, str, TokenCounts]]) -> None:
        self.params = params
        self.rows = [(tag, role, priced(counts, role_config(params, role).price if role in ROLES else None))
                     for tag, role, counts in rows]
        # (stage, round) → (calls, USD): what the estimates read, once per stage and round of a long run.
        self._cells: dict[tuple[str, int | None], tuple[int, float]] = {}
        for tag, _, spend in self.rows:
            calls, usd = self._cells.get((tag.stage, tag.round), (0, 0.0))
            self._cells[(tag.stage, tag.round)] = (calls + spend.calls, usd + (spend.usd or 0.0))

    @classmethod
    def load(cls, params: Params, cache_path: Path) -> Ledger:
        if not cache_path.is_file():
            return cls(params, [])
        cache = CallCache(cache_path)
        try:
            return cls(params, cache.paid(params.run_id))
        finally:
            cache.close()

    def by_role(self, *, round: RoundSel = "any", stages: Iterable[str] | None = None) -> dict[str, RoleSpend]:
        """Per role, the calls of `round` ("any": every round and the run-level stages) and `stages` (None: all)."""
        wanted = None if stages is None else set(stages)
        out: dict[str, RoleSpend] = {}
        for tag, role, spend in self.rows:
            if (round == "any" or tag.round == round) and (wanted is None or tag.stage in wanted):
                out[role] = out[role] + spend if role in out else spend
        return dict(sorted(out.items()))

    def usd(self, *, round: RoundSel = "any") -> float:
        """Spend with unpriced roles counted as 0, as the budget counts them."""
        return sum(spend.usd or 0.0 for tag, _, spend in self.rows if round == "any" or tag.round == round)

    @property
    def priced(self) -> bool:
        return any(role_config(self.params, role).price is not None for role in ROLES)

    def reported_usd(self, *, round: RoundSel = "any") -> float | None:
        """`usd` for the outputs: None when no role has a price, as the spend is then unknown rather than 0."""
        return self.usd(round=round) if self.priced else None

    def calls(self, stage: str, round: int | None) -> int:
        return self._cells.get((stage, round), (0, 0.0))[0]

    def stage_usd(self, stage: str, round: int | None) -> float:
        return self._cells.get((stage, round), (0, 0.0))[1]

    def rounds(self, stage: str) -> list[int]:
        """The rounds in which `stage` paid for any call."""
        return sorted(r for s, r in self._cells if s == stage and r is not None)


# -- estimates -------------------------------------------------------------------------------------------
def _call_usd(cfg: RoleConfig, prompt_chars: int) -> float:
    return 0.0 if cfg.price is None else cfg.price.usd(prompt_chars // CHARS_PER_TOKEN, 0, cfg.max_tokens)


def judge_size_usd(params: Params, stage: str, groups: list[Group]) -> float:
    """USD of a judge stage over `groups` from request sizes: one call per group, its prompt the judge's
    instructions, the question and every answer (cut as the engine cuts them), plus for the verifier the
    longest rubric the engine allows. Repairs and context chunks are not foreseen."""
    from ropd.rubric.prompts import RUBRICATOR_SYSTEM, VERIFIER_SYSTEM
    from ropd.rubric.tjudge import TJUDGE_SYSTEM

    engine = params.engine
    if stage == "mine":
        overhead = len(RUBRICATOR_SYSTEM)
    elif params.method == "tjudge":
        overhead = len(TJUDGE_SYSTEM)
    else:
        overhead = len(VERIFIER_SYSTEM) + engine.max_criteria * (engine.max_criterion_chars + 40)
    cfg = role_config(params, STAGE_ROLE[stage])
    return sum(_call_usd(cfg, overhead + len(g.question) + sum(min(len(a), engine.max_answer_chars)
                                                              for a in [*g.teacher, *g.student]))
               for g in groups)


def teacher_size_usd(params: Params, questions: list[str]) -> float:
    """USD of the teacher stage from request sizes: m calls per question, each its question and system prompt."""
    cfg = params.teacher.role
    system = len(cfg.system_prompt or "")
    return params.teacher.m * sum(_call_usd(cfg, system + len(q)) for q in questions)


class Remaining(BaseModel):
    """What a stage of a round is still expected to cost."""

    stage: str
    round: int | None
    usd: float
    basis: str = Field(description="how the stage's full cost was estimated")


def remaining(ledger: Ledger, stage: str, r: int | None, expected_calls: int,
              size_usd: Callable[[], float]) -> Remaining:
    """The stage's estimate (history, else `size_usd()`, called only then) times the share of its expected
    calls not yet paid."""
    past = [x for x in ledger.rounds(stage) if x != r] if r is not None else []
    if past:
        full = sum(ledger.stage_usd(stage, x) for x in past) / len(past)
        basis = f"mean of {len(past)} other round(s), {past[0]}–{past[-1]}" if len(past) > 1 else f"round {past[0]}"
    else:
        full, basis = size_usd(), "request sizes"
    unpaid = max(0.0, 1.0 - ledger.calls(stage, r) / expected_calls) if expected_calls else 0.0
    return Remaining(stage=stage, round=r, usd=full * unpaid, basis=basis)


class BudgetStatus(BaseModel):
    """The budget check before a judge stage starts: the run's spend so far plus what is left of the round."""

    stage: str
    round: int | None
    max_usd: float
    spent_usd: float
    estimate_usd: float
    estimate: list[Remaining]

    @property
    def over(self) -> bool:
        return self.spent_usd + self.estimate_usd > self.max_usd

    def reason(self, resume: str) -> str:
        where = f"round {self.round} {self.stage}" if self.round is not None else self.stage
        parts = ", ".join(f"{e.stage} {usd_text(e.usd)} ({e.basis})" for e in self.estimate)
        return (f"{where}: the run has spent {usd_text(self.spent_usd)} and what is left of it is estimated at "
                f"{usd_text(self.estimate_usd)} ({parts}), which would overrun budget.max_usd "
                f"{usd_text(self.max_usd)}. "
                f"Nothing of it was started. Raise budget.max_usd in params.yaml and run {resume} to resume.")


def budget_status(ledger: Ledger, stage: str, r: int | None, left: list[Remaining]) -> BudgetStatus:
    max_usd = ledger.params.budget.max_usd
    assert max_usd is not None, "no budget set"
    return BudgetStatus(stage=stage, round=r, max_usd=max_usd, spent_usd=ledger.usd(),
                        estimate_usd=sum(x.usd for x in left), estimate=left)


def round_usage(ledger: Ledger, r: int) -> dict[str, object]:
    """For a round's diagnostics.json: per role the calls paid in round `r`, and the spend of the round
    and of the whole run so far (teacher and evaluations included). USD figures are null when unpriced."""
    return {"usage": {role: spend.model_dump() for role, spend in ledger.by_role(round=r).items()},
            "spend_usd": ledger.reported_usd(round=r), "run_spend_usd": ledger.reported_usd()}


class RoleForecast(BaseModel):
    spent: RoleSpend
    remaining_usd: float | None = Field(description="the role's estimated spend on the judge stages still to run")


class Forecast(BaseModel):
    """`ropd cost estimate`: spent so far and the forecast of the stages left, per role and in all. USD
    figures are None when no role has a price."""

    run_id: str
    rounds: int
    priced: bool
    max_usd: float | None
    spent_usd: float | None
    remaining_usd: float | None
    total_usd: float | None
    roles: dict[str, RoleForecast]


def forecast(ledger: Ledger, plan: list[tuple[str, int | None, int, Callable[[], float]]]) -> Forecast:
    """`plan`: every judge stage of the run as (stage, round, expected calls, USD from request sizes)."""
    left = [remaining(ledger, stage, r, calls, size) for stage, r, calls, size in plan]
    spent = ledger.by_role()
    roles = sorted(set(spent) | {STAGE_ROLE[x.stage] for x in left})
    known, params = ledger.priced, ledger.params

    def usd(value: float) -> float | None:
        return value if known else None

    per_role = {role: RoleForecast(spent=spent.get(role) or priced(TokenCounts(), role_config(params, role).price),
                                   remaining_usd=usd(sum(x.usd for x in left if STAGE_ROLE[x.stage] == role)))
                for role in roles}
    spent_usd, remaining_usd = ledger.usd(), sum(x.usd for x in left)
    return Forecast(run_id=params.run_id, rounds=len(params.rounds), priced=known, max_usd=params.budget.max_usd,
                    spent_usd=usd(spent_usd), remaining_usd=usd(remaining_usd),
                    total_usd=usd(spent_usd + remaining_usd), roles=per_role)
