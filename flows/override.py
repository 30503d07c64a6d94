"""The human override from the Prefect UI (issue 12): `halt` engages the kill switch; `resume`
pauses with a typed form showing the risk state, and resumes only what the operator confirms there.

The rules are `eternal.breakers`' (the CLI's `eternal halt` / `eternal resume` apply the same ones
through `tasks.override`): lifting the kill switch (L4 included) needs the form's second
confirmation; a refusal fails the run with its one-line reason and changes nothing.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed
from pydantic import Field, create_model

from eternal.config import load_settings
from eternal.models import UTC
from tasks import override

RESUME_TIMEOUT_S = 24 * 3600        # an operator has a day to answer; then the run fails, nothing resumed
POLL_INTERVAL_S = 10                # how often the paused run looks for the operator's answer


class ResumeForm(RunInput):
    """The form the Prefect UI shows on the paused `resume` run."""

    confirm: bool = Field(description="I have read the state above and resume trading")
    reason: str = Field(description="Why trading may resume now (kept in the ledger's events)")
    who: str = Field(description="Who decides this resume (kept in the ledger's events)")
    confirm_kill_switch: bool = Field(
        False, description="Second confirmation: lift the kill switch (needed when it is engaged, L4 included); "
                           "from now on orders of every kind are sent again")

    @classmethod
    def with_initial_data(cls, description: str | None = None, **initial: Any) -> type[ResumeForm]:
        """As RunInput's, but each field keeps its description (Prefect 3.8.8's drops them, and the
        UI shows a field's description as its help text)."""
        fields = {k: (cls.model_fields[k].annotation, Field(v, description=cls.model_fields[k].description))
                  for k, v in initial.items()}
        model = create_model(cls.__name__, __base__=cls, **fields)
        if description is not None:
            model._description = description
        return model


@flow(name="halt", log_prints=True)
def halt(reason: str, who: str = "operator") -> dict:
    """Engage the kill switch: no order of any kind leaves and resting orders are cancelled, until a
    confirmed resume. Funding is still booked, the ledger reconciled, reports written.

    Args:
        reason: Why (kept in the ledger's events and sent with the alert).
        who: Who decides it (kept in the ledger's events).
    """
    s = load_settings()
    result = override.halt(s, reason, who, datetime.now(UTC))
    md = override.status_markdown(result["status"])
    create_markdown_artifact(f"# Kill switch engaged by {who}\n\n{reason}\n\n{md}", key="risk-status",
                             description=f"halt by {who}")
    for e in result["events"]:
        get_run_logger().warning(e["message"])
    return result


@flow(name="resume", log_prints=True)
def resume(reason: str | None = None) -> dict:
    """Show the risk state (breaker level, drawdown, positions, why it halted) and pause for the
    operator's typed answer in the UI; resume only when confirmed there (lifting the kill switch needs
    the form's second confirmation). A refusal by the rules fails the run with its reason.

    Args:
        reason: Why trading may resume, shown prefilled on the form (empty: typed there).
    """
    s = load_settings()
    log = get_run_logger()
    status = override.risk_status(s)
    md = override.status_markdown(status)
    create_markdown_artifact(f"# Risk state before the resume\n\n{md}", key="risk-status",
                             description="risk state shown on the resume form")
    ks = status["kill_switch"]
    if ks is None and status["level"] < 2:      # nothing an operator could resume: no form to fill in
        from eternal.breakers import ResumeRefused

        raise ResumeRefused(f"nothing to resume: breaker level {status['level_name']}, kill switch not engaged"
                            + (" (L1 clears by itself)" if status["level"] == 1 else ""))
    ask = ("\n\n**The kill switch is engaged: tick `confirm_kill_switch` too to lift it.**" if ks is not None
           else "")
    form = pause_flow_run(
        wait_for_input=ResumeForm.with_initial_data(
            description=f"## Resume trading?\n\n{md}{ask}", confirm=False, reason=reason or "", who="operator",
            confirm_kill_switch=False),
        timeout=RESUME_TIMEOUT_S, poll_interval=POLL_INTERVAL_S)
    if not form.confirm:
        log.info("not confirmed by %s: nothing resumed", form.who)
        return Completed(message=f"not confirmed by {form.who}: nothing resumed",
                         data={"resumed": False, "who": form.who, "reason": form.reason, "status": status})
    result = override.resume(s, form.reason, form.who, datetime.now(UTC),
                             confirm_kill_switch=form.confirm_kill_switch)   # ResumeRefused fails the run
    for e in result["events"]:
        log.info(e["message"])
    return {"resumed": True, **result}
