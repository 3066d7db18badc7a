"""Status conditions: set one, keeping lastTransitionTime when the status did not change."""

from __future__ import annotations

from lpm.api.models import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """Return `conditions` with `type_` set; the transition time moves only when the status flips."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.status != status
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now if changed else cond.last_transition_time,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(Condition(type_, status, reason, message, now, generation))
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((cond for cond in conditions if cond.type == type_), None)
