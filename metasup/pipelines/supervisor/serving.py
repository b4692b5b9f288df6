"""The supervisor's side of serving: the front door's process (`metasup.pipelines.serve`).

The supervisor binds the front's socket itself, so `serve.listen` port 0 resolves at once and
`serve_url` is in `state.json` before any replica runs, and hands it to the helper. It tells the
helper the good commit (its replicas run that), journals the events the helper reports, and keeps
its last status for `state.json`. A helper that dies is started again on the same socket.

Candidates go on live traffic one at a time: an offer made while another is on waits its turn
here (the helper takes one), and the one on is offered again to a helper started after a death.
A helper that keeps dying has its candidates reverted: none is merged without its canary.
"""

from __future__ import annotations

import json
import selectors
import socket
from pathlib import Path
from typing import Any

from metasup.decisions.serving import Offers
from metasup.effects.process.spawn import Reaper, SpawnError
from metasup.effects.records.journal import StateDir
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.pipelines.supervisor.helper import Helper, ReportPipe, bind_listen, listener_args

EVENTS = {
    e.value: e
    for e in (
        Event.REPLICA_STARTED,
        Event.REPLICA_STOPPED,
        Event.SCALED,
        Event.CANARY_STEP,
        Event.CANARY_REVERTED,
        Event.CANARY_PROMOTED,
    )
}


class ServeProcess:
    def __init__(
        self,
        listen: str,
        dirs: StateDir,
        workdir: Path,
        config_path: Path,
        reaper: Reaper,
        selector: selectors.BaseSelector,
        emit: Emit,
        report: Report,
    ) -> None:
        self.listen = listen
        self.dirs = dirs
        self.workdir = workdir
        self.config_path = config_path
        self.emit = emit
        self.report = report
        self.helper = Helper(
            "metasup.pipelines.serve",
            cwd=dirs.root,
            reaper=reaper,
            log=dirs.logs / "serve.log",
            capture=True,
        )
        self.sock: socket.socket | None = None
        self.url: str | None = None
        self.good: str | None = None
        self.status: dict[str, Any] = {}
        # The canaries' verdicts, (candidate id, promoted, reason), for the loop to take.
        self.verdicts: list[tuple[str, bool, str | None]] = []
        self.offers = Offers()
        self.gave_up = False
        self.stopping = False
        self.pipe = ReportPipe(selector, "serve")

    def start(self) -> str:
        """Bind and start the helper; the front's URL. OSError when the address cannot be
        bound."""
        self.sock, self.url = bind_listen(self.listen)
        self._spawn()
        return self.url

    def _spawn(self) -> None:
        assert self.sock is not None
        args = listener_args(self.sock, self.dirs.root.parent, self.workdir, self.config_path)
        try:
            self.helper.start(*args, pass_fds=(self.sock.fileno(),))
        except SpawnError as e:
            self.report({"event": Notice.SERVE_FAILED, "error": str(e)})
            self._give_up()
            return
        self.pipe.watch(self.helper.stdout_fd)
        if self.good is not None:
            self._tell(self.good)
        if self.offers.on is not None:  # a canary the last helper took with it starts again
            self._send_offer(self.offers.on)

    def follow(self, good: str | None) -> None:
        """The replicas run `good` (the good commit) from now on."""
        if good is None or good == self.good:
            return
        self.good = good
        self._tell(good)

    def offer(self, commit: str, candidate: str) -> bool:
        """Put a candidate on live traffic (its canary's verdict comes back in `verdicts`).
        False when there is no front door to put it behind."""
        if self.gave_up or self.sock is None:
            return False
        self._send_offer(self.offers.offer(commit, candidate))
        return True

    def _send_offer(self, offer: tuple[str, str] | None) -> None:
        if offer is not None:
            line = {"candidate": offer[0], "id": offer[1]}
            self.helper.write(json.dumps(line).encode() + b"\n")

    def _verdict(self, candidate: str, promoted: bool, reason: str | None) -> None:
        self.verdicts.append((candidate, promoted, reason))
        self._send_offer(self.offers.ended(candidate))

    def _tell(self, good: str) -> None:
        self.helper.write(json.dumps({"good": good}).encode() + b"\n")

    def read(self) -> bool:
        """What the helper said: its events journalled, its status kept. True when the status
        changed."""
        changed = False
        for line in self.pipe.lines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            event = EVENTS.get(str(doc.get("event")))
            if event is not None:
                self.emit(event, **{k: v for k, v in doc.items() if k != "event"})
                if event in (Event.CANARY_PROMOTED, Event.CANARY_REVERTED):
                    reason = doc.get("reason")
                    self._verdict(
                        str(doc.get("id")),
                        event is Event.CANARY_PROMOTED,
                        reason if isinstance(reason, str) else None,
                    )
            elif isinstance(doc.get("status"), dict):
                self.status = doc["status"]
                changed = True
        return changed

    def check(self) -> bool:
        """After a SIGCHLD: restart a helper that died (a few times a minute at most)."""
        if self.stopping:
            return False
        code = self.helper.exited()
        if code is None:
            return False
        self.pipe.close()
        if self.helper.restart_after(code, self.report, Notice.SERVE_EXITED, Notice.SERVE_FAILED):
            self._spawn()
        else:
            self._give_up()
        return True

    def _give_up(self) -> None:
        """No front door any more: its candidates are reverted (none is merged unjudged)."""
        self.gave_up = True
        reason = "the front door stopped before its canary ended"
        for commit, candidate in self.offers.drop_all():
            self.emit(Event.CANARY_REVERTED, id=candidate, commit=commit, reason=reason, share=0.0)
            self.verdicts.append((candidate, False, reason))

    def stop(self) -> None:
        self.stopping = True
        self.pipe.close()
        self.helper.stop(grace=10.0)  # its stdin ends: it stops its replicas, then itself
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def trees(self) -> list[dict[str, Any]]:
        return self.helper.trees()

    def describe(self) -> dict[str, Any] | None:
        if self.url is None:
            return None
        return {"url": self.url, **self.status}
