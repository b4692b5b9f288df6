"""One candidate on live traffic: mirrored copies first, then a canary share that steps up, with
its answers judged against the good arm's over the same window (`decisions.serving`).

The front door counts each arm; this reads the counts each tick and moves the candidate on:
- mirror (when `serve.mirror` > 0): `mirror` of the requests are copied to it and its answers
  discarded; after `step_requests` copies answered without a breach, the canary starts;
- canary: `start` of the clients (sticky per session) go to it for real; after `step_requests`
  of them without a breach, the next step; after the last, promoted;
- reverted at the first breach, in either stage.
Each stage and step counts afresh: a window's figures are compared with the good arm's over the
same window, so the machine's mood at the time weighs on both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metasup.decisions.serving import Hold, Promote, Revert, Step, breach, next_canary
from metasup.facts.settings import ServeConfig
from metasup.pipelines.serve.front import Arms, Front


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str | None = None


class CanaryRun:
    def __init__(
        self,
        cfg: ServeConfig,
        front: Front,
        candidate: str,
        commit: str,
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        self.cfg = cfg
        self.front = front
        self.candidate = candidate  # its id (the experiment's, or the member's)
        self.commit = commit
        self.report = report
        self.verdict: Verdict | None = None
        self.started = False  # its replica was started once (a second start is not tried)

    def begin(self) -> None:
        """The candidate's replica is ready: mirror first, or straight to the canary."""
        if self.cfg.mirror > 0:
            self._enter("mirror", 0.0)
        else:
            self._enter("canary", self.cfg.canary.start)

    def _enter(self, stage: str, share: float) -> None:
        self.front.stage = stage
        self.front.share = share
        self.front.arms = Arms()  # a fresh window for this step
        self.report(
            {
                "event": "canary_step",
                "id": self.candidate,
                "commit": self.commit,
                "stage": stage,
                "share": self.cfg.mirror if stage == "mirror" else share,
            }
        )

    def tick(self) -> Verdict | None:
        """Look at the counts; the verdict once there is one (the caller stops the candidate's
        replica on a revert, or hands the candidate on to be merged on a promotion)."""
        if self.verdict is not None:
            return self.verdict
        arms = self.front.arms
        if self.front.stage == "mirror":
            why = breach(self.cfg.canary, arms.good, arms.mirrored)
            if why is not None:
                return self._end(Verdict(False, "mirrored: " + why))
            if arms.mirrored.requests >= self.cfg.canary.step_requests:
                self._enter("canary", self.cfg.canary.start)
            return None
        decided = next_canary(
            self.cfg.canary, self.front.share, arms.candidate.requests, arms.good, arms.candidate
        )
        match decided:
            case Hold():
                return None
            case Step(share=share):
                self._enter("canary", share)
                return None
            case Revert(reason=reason):
                return self._end(Verdict(False, reason))
            case Promote():
                return self._end(Verdict(True))
        return None

    def fail(self, reason: str) -> None:
        """Reverted from outside the counts (its replica died)."""
        if self.verdict is None:
            self._end(Verdict(False, reason))

    def _end(self, verdict: Verdict) -> Verdict:
        self.verdict = verdict
        share = self.front.share if self.front.stage == "canary" else 0.0
        self.front.stage = None
        self.front.share = 0.0
        if verdict.promoted:
            self.report({"event": "canary_promoted", "id": self.candidate, "commit": self.commit})
        else:
            self.report(
                {
                    "event": "canary_reverted",
                    "id": self.candidate,
                    "commit": self.commit,
                    "reason": verdict.reason,
                    "share": share,
                }
            )
        return verdict
