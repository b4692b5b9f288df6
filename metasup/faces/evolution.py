"""How an evolution looks: a plain line per candidate for pipes, a live panel for terminals
(generation, counts, best and median per generation as sparklines, the top candidates), and
the population table."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from metasup.decisions import evolution as evo
from metasup.decisions.evolution import History, Member

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One bar per value, scaled between the lowest and the highest; a gap for None."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    span = high - low
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(BARS[len(BARS) // 2])
        else:
            out.append(BARS[round((v - low) / span * (len(BARS) - 1))])
    return "".join(out)


def score_text(score: float | None) -> str:
    return "-" if score is None else f"{score:.6g}"


def plain_line(record: dict[str, Any]) -> str | None:
    """The line a pipe gets for a journalled evolution event; None for the ones it skips."""
    kind = record.get("event")
    if kind == evo.EVOLUTION_STARTED:
        return (
            f"evolution {record['evolution']} from {str(record.get('base'))[:12]}: "
            f"population {record.get('population')}, islands {record.get('islands')}, "
            f"objective {record.get('objective')}"
        )
    if kind == evo.GENERATION_STARTED:
        return f"generation {record['generation']}"
    if kind == evo.CANDIDATE_EVALUATED:
        verdict = "ok" if record.get("passed") else f"failed: {record.get('reason') or '?'}"
        return (
            f"  {record['id']} {record['operator']} {str(record['commit'])[:12]} "
            f"score {score_text(record.get('score'))} {verdict} ({record.get('duration_ms')} ms)"
        )
    if kind == evo.CANDIDATE_CARRIED:
        return f"  {record['id']} elite carries {record.get('carries')}"
    if kind == evo.CHILD_DISCARDED:
        return f"  {record['id']} {record['operator']}: no child ({record.get('detail')})"
    if kind == evo.GENERATION_FINISHED:
        return (
            f"generation {record['generation']} done: best {score_text(record.get('best'))}, "
            f"median {score_text(record.get('median'))}, evaluated {record.get('evaluated')}, "
            f"failed {record.get('failed')}"
        )
    return None


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The end of a run, for people."""
    lines = [
        f"evolution {doc['evolution']}: {doc['evaluated']} evaluated, {doc['failed']} failed, "
        f"{doc['discarded']} without a child; {doc['stopped'] or 'stopped'}",
        f"best {score_text(doc['best_score'])} ({doc['best_id'] or '-'}), "
        f"good commit {score_text(doc['baseline_score'])}",
    ]
    if doc["interrupted"]:
        lines.append("interrupted: `metasup evolve --resume` goes on from here")
    elif doc["merged"]:
        lines.append(f"merged {str(doc['best_commit'])[:12]} as {doc['merged'][:12]}")
    elif doc["promoted"]:
        lines.append(f"{str(doc['best_commit'])[:12]} beats the good commit (not merged)")
    else:
        why = "; ".join(doc["reasons"]) or "no candidate scored above the good commit"
        lines.append(f"nothing beat the good commit: {why}")
    return lines


def member_doc(m: Member, evolution: str) -> dict[str, Any]:
    return {
        "id": m.id,
        "evolution": evolution,
        "commit": m.commit,
        "ref": f"refs/metasup/pop/{m.id}",
        "score": m.score,
        "passed": m.passed,
        "generation": m.generation,
        "island": m.island,
        "operator": m.operator,
        "parents": list(m.parents),
        "carries": m.carries,
    }


def population_rows(
    members: Iterable[Member], evolution: str | None = None
) -> list[tuple[str, ...]]:
    """Table rows; with `evolution`, ids are shown without its prefix (the header has it)."""
    return [
        (
            m.id.removeprefix(f"{evolution}-") if evolution else m.id,
            score_text(m.score) if m.passed else f"{score_text(m.score)} (failed)",
            str(m.generation),
            str(m.island),
            m.operator,
            " ".join(p[:10] for p in m.parents),
            m.commit[:12],
        )
        for m in members
    ]


POPULATION_HEADER = ("id", "score", "gen", "island", "operator", "parents", "commit")


class LivePanel:
    """The live view of `metasup evolve` on a terminal, fed the journalled records."""

    def __init__(self, top: int = 8) -> None:
        self.top = top
        self.history: History | None = None
        self.last = ""

    def feed(self, record: dict[str, Any]) -> None:
        if record.get("event") == evo.EVOLUTION_STARTED:
            found = evo.histories([record])
            self.history = found.get(str(record.get("evolution")))
        elif self.history is not None:
            self.history.absorb(record)
        line = plain_line(record)
        if line is not None:
            self.last = line.strip()

    def renderable(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        h = self.history
        if h is None:
            return Text("starting…")
        done = sorted(h.generations_finished.items())
        bests = [rec.get("best") for _, rec in done]
        medians = [rec.get("median") for _, rec in done]
        current = max(h.generations_started, default=0)
        head = Text.assemble(
            ("evolution ", "bold"),
            f"{h.evolution}  generation {current}  evaluated {h.evaluations}  "
            f"failed {h.failed}  no child {len(h.discarded)}",
        )
        chart = Table.grid(padding=(0, 1))
        chart.add_row("best  ", sparkline(bests), score_text(bests[-1] if bests else None))
        chart.add_row("median", sparkline(medians), score_text(medians[-1] if medians else None))
        table = Table(title="top candidates", title_justify="left")
        for col in POPULATION_HEADER:
            table.add_column(col)
        for row in population_rows(evo.ranked(h.members.values())[: self.top], h.evolution):
            table.add_row(*row)
        return Group(head, chart, table, Text(self.last, style="dim"))


class PlainFace:
    """A line per journalled event, for pipes (or nothing, for --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.lock = threading.Lock()  # candidates are journalled from several threads

    def opened(self, history: History, resumed: bool) -> None:
        if self.quiet or not resumed:
            return
        if history.finished is not None:
            print(f"evolution {history.evolution} finished already; nothing to resume", flush=True)
        else:
            print(f"resuming the interrupted evolution {history.evolution}", flush=True)

    def feed(self, record: dict[str, Any]) -> None:
        line = None if self.quiet else plain_line(record)
        if line is not None:
            with self.lock:
                print(line, flush=True)

    def close(self) -> None:
        pass


class LiveFace(PlainFace):
    def __init__(self) -> None:
        from rich.live import Live

        super().__init__(quiet=True)
        self.panel = LivePanel()
        self.live = Live(self.panel.renderable(), refresh_per_second=4, transient=False)
        self.live.start()

    def feed(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.panel.feed(record)
            self.live.update(self.panel.renderable())

    def close(self) -> None:
        self.live.stop()


def face_for(as_json: bool) -> PlainFace:
    if as_json:
        return PlainFace(quiet=True)
    if sys.stdout.isatty():
        return LiveFace()
    return PlainFace(quiet=False)
