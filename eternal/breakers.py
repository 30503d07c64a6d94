"""Portfolio circuit breakers and the kill switch, pure (spec layer 4; issue 12).

Drawdown is measured on the **unit value**: the portfolio's net asset value per unit. The first
close issues units at 1.0 USDT each; a deposit buys units at the unit value of the close it arrives
at, so deposits (and withdrawals) never move it. The drawdown is 1 - unit value / high-water mark.

Levels (`RiskParams.level_drawdowns`, the seed's risk framework):

* L1 at 10 %: TREND and FUNDING new sizes x 0.75, TACTICAL paused 24 h. Clears by itself at a
  drawdown of 5 % or less.
* L2 at 15 %: TREND new sizes x 0.5, no new entries for 72 h. Resumed by an operator once the
  drawdown is 10 % or less.
* L3 at 20 %: TREND and FUNDING positions closed, no new entries. Resumed by an operator; new
  sizes x 0.25 until the next quarter starts (its quarterly rebalance).
* L4 at 25 %: everything sold to USDT and the kill switch engaged. Only a resume with a second,
  explicit confirmation lifts it.

Levels escalate by themselves at a daily close; beyond L1 only `resume` de-escalates. A resume
from L3 or L4 re-bases the high-water mark at the current unit value (after L4 the portfolio is
cash: its drawdown can never recover, and the old mark would re-trigger L4 at once). A backfill
has no operator: once a level's resume condition has held for `replay_resume_days` (L2: drawdown
at or below 10 % at every close since; L3 and L4: since the close they engaged), the replay resumes
as an operator would.

The kill switch is separate from the levels: `halt` engages it (an operator, L4, or an exchange
reporting withdrawals suspended); while engaged no order of any kind is sent.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from eternal.config import RiskParams
from eternal.errors import EternalError
from eternal.models import Event, utc

LEVEL_NAMES = {0: "normal", 1: "L1", 2: "L2", 3: "L3", 4: "L4"}


class ResumeRefused(EternalError):
    """A resume the rules do not allow now (the message says which rule and what to do)."""


class KillSwitch(BaseModel):
    reason: str
    who: str
    at: datetime
    level: int = 0                      # the breaker level when it was engaged


class RiskState(BaseModel):
    """The governance state persisted with the portfolio (its document's `risk`)."""

    units: float = 0.0                  # units outstanding (0: no close seen yet)
    unit_value: float = 1.0             # NAV per unit at the last close (USDT)
    hwm: float = 1.0                    # high-water mark of the unit value
    drawdown: float = 0.0               # 1 - unit_value / hwm at the last close
    nav: float = 0.0                    # portfolio NAV at the last close (USDT)
    level: int = 0
    engaged_at: datetime | None = None  # when the current level was reached
    tactical_paused_until: datetime | None = None
    entries_blocked_until: datetime | None = None
    restart_size_until: datetime | None = None   # after an L3/L4 resume: l3_restart_size until then
    recovered_at: datetime | None = None         # when the level's resume condition first held
    kill_switch: KillSwitch | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)   # every level change and override

    @property
    def halted(self) -> bool:
        return self.kill_switch is not None


def load(doc: dict | None) -> RiskState:
    return RiskState.model_validate(doc or {})


def dump(state: RiskState) -> dict:
    return state.model_dump(mode="json")


def next_quarter_start(now: datetime) -> datetime:
    """00:00 UTC of the first day of the quarter after `now` (the quarterly rebalance)."""
    month = ((now.month - 1) // 3 + 1) * 3 + 1
    year = now.year + (month > 12)
    return now.replace(year=year, month=(month - 1) % 12 + 1, day=1, hour=0, minute=0, second=0, microsecond=0)


def _event(now: datetime, kind: str, message: str, event_level: str, **data: Any) -> Event:
    return Event(now, kind, message, None, event_level, data)


def observe(state: RiskState, nav: float, now: datetime, params: RiskParams, *,
            simulate_resume: bool = False) -> tuple[RiskState, list[Event]]:
    """A daily close: the unit value from `nav` (USDT, all sleeves at the close, before this
    close's deposits), its high-water mark and drawdown, then the breakers (when enabled):
    escalation, L1's own clearing, and in a replay the simulated operator's resume.
    Returns a new state and the events (level changes are alerts)."""
    st = state.model_copy(update={"history": list(state.history)})   # entries are never changed
    now = utc(now)
    if st.units <= 0:                       # the first close: units at 1.0 USDT
        st.units, st.hwm = (nav, 1.0) if nav > 0 else (0.0, 1.0)
    uv = nav / st.units if st.units > 0 else 1.0
    st.unit_value, st.nav = uv, nav
    st.hwm = max(st.hwm, uv)
    st.drawdown = 1.0 - uv / st.hwm if st.hwm > 0 else 0.0
    events: list[Event] = []
    if not params.breakers_enabled:
        return st, events
    dd, levels = st.drawdown, params.level_drawdowns
    reached = max((n for n, lv in enumerate(levels, 1) if dd >= lv), default=0)
    numbers = {"drawdown": dd, "unit_value": uv, "high_water_mark": st.hwm, "nav_usdt": nav}
    if reached > st.level:
        before = st.level
        st.level, st.engaged_at, st.recovered_at = reached, now, None
        acts = []
        if reached >= 1:
            st.tactical_paused_until = now + timedelta(hours=params.l1_tactical_pause_hours)
            acts.append(f"TREND and FUNDING new sizes x{params.l1_size:g}, TACTICAL paused "
                        f"{params.l1_tactical_pause_hours} h")
        if reached >= 2:
            st.entries_blocked_until = now + timedelta(hours=params.l2_no_entry_hours)
            acts.append(f"TREND new sizes x{params.l2_trend_size:g}, no new entries for {params.l2_no_entry_hours} h")
        if reached >= 3:
            acts.append("TREND and FUNDING positions closed, no new entries until a manual resume")
        if reached >= 4:
            acts.append("everything sold to USDT, kill switch engaged")
            st.kill_switch = KillSwitch(reason=f"L4 breaker: drawdown {dd:.2%}", who="breaker", at=now, level=4)
        st.history.append({"at": now.isoformat(), "from": before, "to": reached, "why": "drawdown", **numbers})
        events.append(_event(now, "breaker_escalated",
                             f"circuit breaker {LEVEL_NAMES[before]} -> L{reached}: unit value {uv:.4f} is "
                             f"{dd:.2%} below its high-water mark {st.hwm:.4f} (L{reached} at "
                             f"{levels[reached - 1]:.0%}): " + "; ".join(acts), "alert", level=reached,
                             previous=before, **numbers))
        if reached >= 4:
            events.append(_event(now, "kill_switch_engaged", f"kill switch engaged by the L4 breaker "
                                 f"(drawdown {dd:.2%}): no order leaves until a confirmed resume", "alert",
                                 who="breaker", reason=st.kill_switch.reason))
        return st, events
    if st.level == 1 and dd <= params.l1_clear_drawdown:
        st.history.append({"at": now.isoformat(), "from": 1, "to": 0, "why": "recovered", **numbers})
        st.level, st.engaged_at, st.tactical_paused_until = 0, None, None
        events.append(_event(now, "breaker_cleared", f"circuit breaker L1 cleared: drawdown {dd:.2%} is at or "
                             f"below {params.l1_clear_drawdown:.0%}", "info", level=0, previous=1, **numbers))
        return st, events
    if st.level == 2 and dd > params.l2_clear_drawdown:
        st.recovered_at = None               # the condition must hold for the whole wait
    elif st.level >= 2 and st.recovered_at is None:
        st.recovered_at = now if st.level == 2 else st.engaged_at
    if (simulate_resume and params.replay_resume_days is not None and st.level >= 2
            and st.recovered_at is not None and now >= st.recovered_at + timedelta(days=params.replay_resume_days)):
        st, more = resume(st, now, "replay policy", f"ETERNAL_RISK__REPLAY_RESUME_DAYS={params.replay_resume_days}: "
                          "the simulated operator resumes", params, confirm_kill_switch=True)
        events += more
    return st, events


def resume(state: RiskState, now: datetime, who: str, reason: str, params: RiskParams, *,
           confirm_kill_switch: bool = False) -> tuple[RiskState, list[Event]]:
    """An operator's resume. Lifts the kill switch (only with `confirm_kill_switch`, the second
    confirmation) and clears what the rules let a human clear: L3 and L4 always, L2 at a drawdown at
    or below `l2_clear_drawdown` (above it, a kill switch lifted alone leaves L2 in force), never L1
    (it clears by itself). Raises ResumeRefused naming the rule when nothing may be resumed."""
    now = utc(now)
    if not reason.strip() or not who.strip():
        raise ResumeRefused("a resume needs a reason and who decided it (neither may be blank)")
    l2_held = state.level == 2 and state.drawdown > params.l2_clear_drawdown
    clears_level = state.level >= 3 or (state.level == 2 and not l2_held)
    l2_rule = (f"breaker L2 can be resumed at a drawdown of {params.l2_clear_drawdown:.0%} or less; it is "
               f"{state.drawdown:.2%} (unit value {state.unit_value:.4f}, high-water mark {state.hwm:.4f})")
    if state.kill_switch is None:
        if l2_held:
            raise ResumeRefused(l2_rule)
        if not clears_level:
            what = (f"breaker L1 clears by itself at a drawdown of {params.l1_clear_drawdown:.0%} or less"
                    if state.level == 1 else "nothing is halted")
            raise ResumeRefused(f"nothing to resume: {what} (drawdown {state.drawdown:.2%})")
    elif not confirm_kill_switch:
        raise ResumeRefused(f"the kill switch is engaged ({state.kill_switch.reason}, by {state.kill_switch.who} "
                            f"at {state.kill_switch.at:%Y-%m-%d %H:%MZ}): lifting it needs the second "
                            "confirmation (--confirm-kill-switch, or the form's confirm_kill_switch)")
    st = state.model_copy(update={"history": list(state.history)})
    events: list[Event] = []
    before = st.level
    numbers = {"drawdown": st.drawdown, "unit_value": st.unit_value, "high_water_mark": st.hwm}
    if st.kill_switch is not None:
        kept = f"; breaker L{before} stays in force ({l2_rule})" if l2_held else (
            "; breaker L1 stays until it clears by itself" if before == 1 else "")
        events.append(_event(now, "kill_switch_lifted", f"kill switch lifted by {who} at {now:%Y-%m-%d %H:%MZ}: "
                             f"{reason} (it was engaged by {st.kill_switch.who}: {st.kill_switch.reason}){kept}",
                             "alert", who=who, reason=reason, engaged_by=st.kill_switch.who))
        st.kill_switch = None
        st.history.append({"at": now.isoformat(), "from": before, "to": before,
                           "why": f"kill switch lifted by {who}: {reason}", **numbers})
    if clears_level:
        if before >= 3:
            st.hwm = st.unit_value                  # re-based: see the module's docstring
            st.restart_size_until = next_quarter_start(now)
        events.append(_event(now, "breaker_resumed", f"circuit breaker L{before} resumed by {who} at "
                             f"{now:%Y-%m-%d %H:%MZ}: {reason}" + (
                                 f"; new sizes x{params.l3_restart_size:g} until the quarter starting "
                                 f"{st.restart_size_until:%Y-%m-%d}" if before >= 3 else ""),
                             "alert", level=0, previous=before, who=who, reason=reason, **numbers))
        st.history.append({"at": now.isoformat(), "from": before, "to": 0, "why": f"resume by {who}: {reason}",
                           **numbers})
        st.level, st.engaged_at, st.recovered_at = 0, None, None
        st.entries_blocked_until = st.tactical_paused_until = None
    return st, events


def halt(state: RiskState, now: datetime, who: str, reason: str) -> tuple[RiskState, list[Event]]:
    """Engage the kill switch (an operator's `eternal halt`, or the exchange's health). Engaging it
    again keeps the first reason and adds nothing."""
    now = utc(now)
    if not reason.strip() or not who.strip():
        raise ResumeRefused("a halt needs a reason and who engages it (neither may be blank)")
    if state.kill_switch is not None:
        return state, []
    st = state.model_copy(update={"history": list(state.history)})   # entries are never changed
    st.kill_switch = KillSwitch(reason=reason, who=who, at=now, level=st.level)
    st.history.append({"at": now.isoformat(), "from": st.level, "to": st.level, "why": f"halt by {who}: {reason}"})
    return st, [_event(now, "kill_switch_engaged", f"kill switch engaged by {who} at {now:%Y-%m-%d %H:%MZ}: "
                       f"{reason}; no order of any kind is sent until `eternal resume --confirm-kill-switch`",
                       "alert", who=who, reason=reason)]


def issue_units(state: RiskState, usdt: float) -> RiskState:
    """Units bought by a deposit of `usdt` at the last close's unit value (it does not move it)."""
    if usdt <= 0 or state.units <= 0:
        return state
    return state.model_copy(update={"units": state.units + usdt / state.unit_value,
                                    "nav": state.nav + usdt})


def size_factor(state: RiskState, sleeve_value: str, now: datetime, params: RiskParams) -> float:
    """The multiplier of a new entry's size for a sleeve ('trend-1', 'funding', 'tactical'; CORE is
    never cut), 0.0 when entries are refused now."""
    if sleeve_value == "core" or not params.breakers_enabled:
        return 1.0
    if state.level >= 3:
        return 0.0
    if state.entries_blocked_until is not None and now < state.entries_blocked_until:
        return 0.0
    if sleeve_value == "tactical" and state.tactical_paused_until is not None and now < state.tactical_paused_until:
        return 0.0
    factor = 1.0
    trend = sleeve_value.startswith("trend")
    if state.level >= 2 and trend:
        factor = params.l2_trend_size
    elif state.level >= 1 and (trend or sleeve_value == "funding"):
        factor = params.l1_size
    if state.restart_size_until is not None and now < state.restart_size_until:
        factor *= params.l3_restart_size
    return factor


def days_at_levels(history: list[dict], start: datetime, end: datetime) -> dict[str, float]:
    """Days spent at each level between `start` and `end`, from the state's history."""
    out = {LEVEL_NAMES[n]: 0.0 for n in range(5)}
    level, since = 0, utc(start)
    for h in history:
        at = utc(h["at"])
        out[LEVEL_NAMES[level]] += max(0.0, (at - since).total_seconds() / 86400)
        level, since = h["to"], at
    out[LEVEL_NAMES[level]] += max(0.0, (utc(end) - since).total_seconds() / 86400)
    return out
