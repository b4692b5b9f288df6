"""The journal's keyed chain: what makes dropped, edited, re-chained or cut-off events visible.

`prev` (the SHA-256 of the line before) shows a line edited in place, but anyone can compute it
again after dropping or editing lines. So each line also carries `mac`, an HMAC-SHA256 over the
line (without its mac) and the mac of the line before, under a key in
`<git-dir>/metasup/secret/journal.key`; the jail hides that folder from everything it runs. The
last seq and mac are kept there too (`journal.tail`), so a journal cut short is told apart from
one that ended there. A line is written as its JSON body with `,"mac":"…"` added at the end, so
the body is recovered byte for byte.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from metasup.effects.files.safeio import read_regular
from metasup.facts.digest import hmac_sha256_hex

MAC_FIELD = b',"mac":"'
_TAIL_SIZE = 20 + 1 + 64 + 1


def sign(key: bytes, prev_mac: str, body: bytes) -> str:
    return hmac_sha256_hex(key, prev_mac.encode() + b"\n" + body)


def with_mac(body: bytes, mac: str) -> bytes:
    """The line for `body` (a JSON object, no newline) carrying `mac` as its last field."""
    return body[:-1] + MAC_FIELD + mac.encode() + b'"}'


def split(line: bytes) -> tuple[bytes, str | None]:
    """(body, mac) of a journal line; mac None for a line written without one."""
    line = line.rstrip(b"\n")
    at = line.rfind(MAC_FIELD)
    if at < 0 or not line.endswith(b'"}'):
        return line, None
    mac = line[at + len(MAC_FIELD) : -2]
    if len(mac) != 64 or not all(c in b"0123456789abcdef" for c in mac):
        return line, None
    return line[:at] + b"}", mac.decode()


@dataclass(frozen=True)
class Tail:
    seq: int
    mac: str


class Secret:
    """The folder the jail hides: the key, and the journal's tail kept aside."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key_path = folder / "journal.key"
        self.tail_path = folder / "journal.tail"
        self._tail_fd = -1

    def key(self, create: bool) -> tuple[bytes | None, bool]:
        """(the key, whether it was made now); (None, False) when missing and not `create`."""
        try:
            data = read_regular(self.key_path)
        except OSError:
            data = None  # a link or a fifo planted there: no key of ours
        if data:
            return data, False
        if not create:
            return None, False
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = os.urandom(32)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.key_path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.key_path, flags, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key, True

    def read_tail(self) -> Tail | None:
        try:
            data = read_regular(self.tail_path, limit=_TAIL_SIZE)
        except OSError:
            return None
        if not data:
            return None
        try:
            seq, mac = data.decode().split()
            return Tail(int(seq), mac)
        except ValueError:
            return None

    def write_tail(self, seq: int, mac: str) -> None:
        """In place, one fixed-size write and no sync: it may lag the journal after a power
        cut (never a false alarm), never run ahead of it."""
        if self._tail_fd < 0:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                self._tail_fd = os.open(self.tail_path, flags, 0o600)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                os.unlink(self.tail_path)
                self._tail_fd = os.open(self.tail_path, flags, 0o600)
        os.pwrite(self._tail_fd, f"{seq:020d} {mac}\n".encode(), 0)

    def close(self) -> None:
        if self._tail_fd >= 0:
            os.close(self._tail_fd)
            self._tail_fd = -1


def verify_macs(
    lines: Iterable[bytes], key: bytes | None, tail: Tail | None, start_mac: str = ""
) -> list[str]:
    """Problems in the keyed chain of `lines` (whole journal lines, in order).

    Lines before the first one with a mac were written before keys existed and are taken as
    they are; after it, every line must carry a mac made with `key` over its body and the mac
    before. `tail` (the last seq and mac kept aside) shows a journal cut short."""
    problems: list[str] = []
    prev_mac = start_mac
    keyed = bool(start_mac)
    by_seq: dict[int, str | None] = {}
    last_seq = 0
    for n, raw in enumerate(lines, start=1):
        body, mac = split(raw)
        try:
            seq = int(json.loads(body).get("seq"))
        except (ValueError, TypeError, AttributeError):
            seq = -1
        last_seq = max(last_seq, seq)
        by_seq[seq] = mac
        if mac is None:
            if keyed:
                problems.append(f"line {n} (seq {seq}): no mac after keyed lines began")
            continue
        if key is None:
            problems.append(f"line {n} (seq {seq}): keyed, but the journal key is missing")
            return problems
        if sign(key, prev_mac, body) != mac:
            problems.append(
                f"line {n} (seq {seq}): mac does not match (edited, or re-chained without the key)"
            )
        keyed = True
        prev_mac = mac
    if tail is not None:
        if last_seq < tail.seq:
            problems.append(
                f"the journal ends at seq {last_seq}, but seq {tail.seq} was written: "
                "events were cut off"
            )
        elif tail.seq in by_seq and by_seq[tail.seq] != tail.mac:
            problems.append(f"seq {tail.seq} differs from the copy of its mac kept aside")
    return problems
