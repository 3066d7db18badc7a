"""One answer of a decider, under construction: the one way the three deciders collect what they ask for.

A decider starts a `Plan` from the observed status and the outcomes known so far, changes `plan.status` in place,
asks for effects with `plan.outcome(effect)` (None until the effect ran; the fixed-point loop then runs it and
decides again), records events, and returns `plan.actions()`. A finalizer's decider also says, with `hold`, why
the object may not go yet.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Generic, TypeVar

from lpm.controller.effects import Action, Effect, EmitEvent, HoldFinalizer, Outcome, PatchStatus

StatusT = TypeVar("StatusT")


class Plan(Generic[StatusT]):
    def __init__(self, status: StatusT, outcomes: Mapping[str, Outcome]) -> None:
        self.observed_status = status
        self.status: StatusT = copy.deepcopy(status)
        self.outcomes = outcomes
        self.effects: list[Effect] = []
        self.events: list[EmitEvent] = []
        self.holds: list[HoldFinalizer] = []

    def outcome(self, effect: Effect) -> Outcome | None:
        """The effect's outcome if it already ran this cycle; otherwise ask for it and return None."""
        out = self.outcomes.get(effect.key)
        if out is None:
            self.effects.append(effect)
        return out

    def settled(self, effect: Effect) -> bool:
        """Ask for `effect` and tell whether it is done with: it succeeded, or failed for good (retrying
        would not help). What a finalizer waits for."""
        out = self.outcome(effect)
        return out is not None and (out.ok or not out.retryable)

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(EmitEvent(type_, reason, message))

    def hold(self, why: str) -> None:
        """Finalizers only: the object may not go yet (the finalizer is asked again later)."""
        self.holds.append(HoldFinalizer(why))

    def actions(self) -> list[Action]:
        out: list[Action] = list(self.effects)
        if self.status != self.observed_status:
            out.append(PatchStatus(self.status))
        out.extend(self.events)
        out.extend(self.holds)
        return out
