"""The event names of `events.jsonl` (SPEC, "Events")."""

from collections.abc import Callable
from enum import StrEnum
from typing import Any


class Event(StrEnum):
    SUPERVISOR_START = "supervisor_start"
    SUPERVISOR_STOP = "supervisor_stop"
    SNAPSHOT = "snapshot"
    LAUNCH = "launch"
    EXIT = "exit"
    MARK_GOOD = "mark_good"
    ROLLBACK = "rollback"
    ARCHIVE = "archive"
    EMERGENCY_STOP = "emergency_stop"
    HEALTH_KILL = "health_kill"
    TAMPER_RESTORED = "tamper_restored"
    PROPOSAL_RECEIVED = "proposal_received"
    PROPOSAL_REJECTED = "proposal_rejected"
    PROPOSAL_APPLIED = "proposal_applied"
    EXPERIMENT_STARTED = "experiment_started"
    EXPERIMENT_PASSED = "experiment_passed"
    EXPERIMENT_FAILED = "experiment_failed"
    MERGED = "merged"
    MCP_STARTED = "mcp_started"
    MCP_UNHEALTHY = "mcp_unhealthy"
    MCP_RESTARTED = "mcp_restarted"
    MCP_FAILED = "mcp_failed"
    RESTART_REQUESTED = "restart_requested"
    BACKUP = "backup"
    ARCHIVES_PRUNED = "archives_pruned"
    APPROVED = "approved"
    RECOVERED = "recovered"
    REFS_RESTORED = "refs_restored"
    JOURNAL_BROKEN = "journal_broken"
    REPLICA_STARTED = "replica_started"
    REPLICA_STOPPED = "replica_stopped"
    SCALED = "scaled"
    CANARY_STEP = "canary_step"
    CANARY_REVERTED = "canary_reverted"
    CANARY_PROMOTED = "canary_promoted"


class Notice(StrEnum):
    """Report lines that are not journalled: said on the terminal (or the live view's log) as
    they happen, about metasup's own helpers and steps rather than the agent's history."""

    API_BRIDGE_FAILED = "api_bridge_failed"
    API_EXITED = "api_exited"
    API_FAILED = "api_failed"
    API_LISTENING = "api_listening"
    BACKUP_FAILED = "backup_failed"
    CHANGES_MISSED = "changes_missed"
    INBOX_POLLING = "inbox_polling"
    INBOX_REFUSED = "inbox_refused"
    INTEGRITY_STOP = "integrity_stop"
    LEFTOVERS_STOPPED = "leftovers_stopped"
    MCP_WORKER_EXITED = "mcp_worker_exited"
    OBJECTS_PACKED = "objects_packed"
    PACK_FAILED = "pack_failed"
    MCP_WORKER_FAILED = "mcp_worker_failed"
    PROPOSAL_UNREADABLE = "proposal_unreadable"
    PRUNE_FAILED = "prune_failed"
    SANDBOX = "sandbox"
    STALE_LOCKS_REMOVED = "stale_locks_removed"
    STOP_REQUESTED = "stop_requested"
    STRAGGLERS_STOPPED = "stragglers_stopped"
    TAMPER_WATCH_OFF = "tamper_watch_off"
    VERIFY_FAILED = "verify_failed"
    VIEW_FAILED = "view_failed"
    RESUMING_ROLLBACK = "resuming_rollback"
    SERVE_EXITED = "serve_exited"
    SERVE_FAILED = "serve_failed"
    SERVE_LISTENING = "serve_listening"


# emit(event, **fields): journal the event, then report it.
Emit = Callable[..., object]
# A report line that is not journalled (a Notice, or an event record as journalled).
Report = Callable[[dict[str, Any]], None]
