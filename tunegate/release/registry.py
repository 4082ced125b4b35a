"""The adapter registry: aliases (production, staging, ...) pointing at adapter ids, with history.

An alias moves to an adapter only when every gate of the adapter's latest gate run passed
(outcome `pass`; an alias whose policy accepts `inconclusive`, e.g. staging, also takes that
outcome, never `fail`, and the promotion records which gates it took inconclusive) and its
files are, byte for byte, the files those gates judged. Two hashes make that
checkable at any later time:

- the adapter id: sha256 of the weight files (`train.py`), so the id names the weights;
- the files digest: sha256 over the files of the adapter directory (relative name and
  bytes: weights, `adapter_config.json`, tokenizer, template), recorded with each gate
  verdict and with each alias move.

`--force` overrides failed or missing gates (never the weights check) and is recorded with
who and why. Every decision, refusals included, lands in `promotions`: an alias's history.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.hashing import sha256_tree
from tunegate.lineage import ALIAS_MOVES, Lineage, LineageError
from tunegate.models import ModelError, sha256_dir

ACTOR_ENV = "TUNEGATE_ACTOR"
MANIFEST = "manifest.json"


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out (unknown adapter or alias, no reason)."""


@dataclass(frozen=True)
class Decision:
    adapter_id: str
    alias: str
    promoted: bool
    reason: str
    decision: str = ""  # promoted | forced | rollback | refused


@dataclass(frozen=True)
class Check:
    """Whether an adapter may be released, with a one-line reason either way."""

    ok: bool
    reason: str
    adapter_id: str | None = None


def actor() -> str:
    """Who made a decision: `$TUNEGATE_ACTOR` (a CI job sets it), else the OS user."""
    if os.environ.get(ACTOR_ENV, "").strip():
        return os.environ[ACTOR_ENV].strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# The manifest fields that change what the adapter means: `tunegate export` reads them to
# rebuild the base it merges into (base weights, how they were quantized, the LoRA shape).
MANIFEST_MEANING = ("adapter_id", "base_model", "quantization", "lora")


def files_digest(path: Path) -> str:
    """sha256 over every file under an adapter directory (relative names and contents), and of
    `manifest.json` the fields in `MANIFEST_MEANING` only: the rest is the run's metadata
    (times, metrics), which differs between two runs that trained the very same weights."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None  # missing or unreadable: hashed as such, and `export` refuses it
    meaning = {k: manifest.get(k) for k in MANIFEST_MEANING} if isinstance(manifest, dict) else None
    trailer = f"{MANIFEST}#meaning\0".encode() + json.dumps(meaning, sort_keys=True).encode()
    files = (p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
    return sha256_tree(path, files, trailer=trailer)


def resolve_adapter(lineage: Lineage, ref: str) -> tuple[dict[str, Any], Path]:
    """An adapter id (a unique prefix is enough) or an adapter directory -> (row, files to check).

    A directory is identified by its weights hash, so a copy (a CI artifact) is checked as it is.
    """
    path = Path(ref).expanduser()
    try:
        if path.is_dir():
            row = lineage.adapter(sha256_dir(path))
            return row, path.resolve()
        row = lineage.adapter(ref)
    except (LineageError, ModelError) as exc:
        raise RegistryError(str(exc)) from None
    return row, Path(row["path"])


def integrity_problem(adapter_id: str, path: Path) -> str | None:
    """Why `path` does not hold the adapter `adapter_id` (missing, or other weights), or None."""
    if not path.is_dir():
        return f"adapter directory {path} is missing"
    try:
        weights = sha256_dir(path)
    except ModelError as exc:
        return str(exc)
    if weights != adapter_id:
        return f"weights in {path} hash to {weights[:12]}, not the adapter id {adapter_id[:12]}"
    return None


def inconclusive_gates(lineage: Lineage, adapter_id: str) -> list[str]:
    """The gates of the adapter's latest gate run whose outcome is inconclusive."""
    return [g["gate"] for g in lineage.latest_gates(adapter_id) if g["outcome"] == "inconclusive"]


def gate_problems(
    lineage: Lineage, adapter_id: str, digest: str, accept_inconclusive: bool = False
) -> list[str]:
    """Why the adapter's gates do not vouch for these files (empty: every gate passed on them,
    or, with `accept_inconclusive`, none failed)."""
    gates = lineage.latest_gates(adapter_id)
    if not gates:
        return ["no gate has judged this adapter"]
    taken = {"pass", "inconclusive"} if accept_inconclusive else {"pass"}
    problems = [f"gate {g['gate']} {'failed' if g['outcome'] == 'fail' else g['outcome']} "
                f"({g['reason']})" for g in gates if g["outcome"] not in taken]  # fmt: skip
    judged = {g["files_sha256"] for g in gates}
    if judged != {digest}:
        problems.append(
            f"adapter files changed since the gates judged them (digest now {digest[:12]}, "
            f"judged {', '.join(sorted(str(d)[:12] for d in judged))})"
        )
    return problems


def promote(
    lineage: Lineage,
    ref: str,
    alias: str,
    *,
    force: bool = False,
    reason: str | None = None,
    run_id: str | None = None,
    accept_inconclusive: bool = False,
) -> Decision:
    """Move `alias` to an adapter whose gates all passed on its current files, or refuse.

    `accept_inconclusive` (the alias's policy, `promote.accept_inconclusive`) also takes
    inconclusive gates, never failed ones, and records which it took. `force` moves it
    despite failed or missing gates; it needs a `reason`, and the decision records who forced
    it, why, and what it overrode. A refusal is recorded too.
    """
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason: a forced promotion must say why")
    row, path = resolve_adapter(lineage, ref)
    adapter_id, who = row["adapter_id"], actor()

    broken = integrity_problem(adapter_id, path)
    if broken:  # not even --force promotes files that are not this adapter
        why = f"refused: {broken}"
        lineage.record_promotion(adapter_id, alias, "refused", why, who, run_id)
        return Decision(adapter_id, alias, False, why, "refused")
    digest = files_digest(path)
    problems = gate_problems(lineage, adapter_id, digest, accept_inconclusive)
    taken: list[str] = []
    if not problems:
        gates = lineage.latest_gates(adapter_id)
        taken = inconclusive_gates(lineage, adapter_id)
        head = (
            "all gates passed"
            if not taken
            else (f"gates passed, {', '.join(taken)} inconclusive and accepted by {alias}'s policy")
        )
        why = f"{head}: " + "; ".join(g["reason"] for g in gates)
        decision = "promoted"
    elif force:
        why = f"forced by {who}: {reason}; overriding: " + "; ".join(problems)
        decision = "forced"
    else:
        why = "refused: " + "; ".join(problems)
        decision = "refused"
    lineage.record_promotion(adapter_id, alias, decision, why, who, run_id, digest, taken)
    return Decision(adapter_id, alias, decision != "refused", why, decision)


def alias_stack(lineage: Lineage, alias: str) -> list[str]:
    """The adapters an alias has pointed at and not been rolled back from, oldest first."""
    stack: list[str] = []
    for move in lineage.alias_history(alias):
        if move["decision"] == "rollback" and stack:
            stack.pop()
        elif move["decision"] in ALIAS_MOVES and (not stack or stack[-1] != move["adapter_id"]):
            stack.append(move["adapter_id"])
    return stack


def rollback(lineage: Lineage, alias: str, reason: str | None = None) -> Decision:
    """Point `alias` back at the adapter it held before its current one.

    Repeated rollbacks walk further back. The earlier adapter's files must still be the
    ones it was promoted with; its gates were checked when it was promoted.
    """
    stack = alias_stack(lineage, alias)
    if not stack:
        raise RegistryError(f"alias {alias!r} points at nothing: nothing to roll back")
    if len(stack) < 2:
        raise RegistryError(f"alias {alias!r} has no earlier adapter to roll back to")
    current, target = stack[-1], stack[-2]
    row = lineage.adapter(target)
    path = Path(row["path"])
    promoted_with = [m["files_sha256"] for m in lineage.alias_history(alias)
                     if m["adapter_id"] == target and m["decision"] in ALIAS_MOVES]  # fmt: skip
    broken = integrity_problem(target, path)
    if not broken and files_digest(path) != promoted_with[-1]:
        broken = f"files of {target[:12]} changed since it was promoted"
    if broken:
        raise RegistryError(f"cannot roll back {alias!r} to {target[:12]}: {broken}")
    who = actor()
    why = f"rolled back from {current[:12]} by {who}" + (f": {reason}" if reason else "")
    lineage.record_promotion(target, alias, "rollback", why, who, None, promoted_with[-1])
    return Decision(target, alias, True, why, "rollback")


def release_check(lineage: Lineage, *, alias: str | None = None, ref: str | None = None) -> Check:
    """May this adapter ship? Its files must match the registry and its gates must have passed.

    With `alias`, the files are the registered adapter directory and must also match the
    digest the alias was moved with; with `ref` (id or directory), that adapter's files.
    Every gate must be `pass`, except the inconclusive ones the alias's policy accepted when
    it moved the alias (recorded with the promotion); with `ref`, every gate.
    """
    if (alias is None) == (ref is None):
        raise RegistryError("give an alias or an adapter, not both")
    expected, accepted = None, set()
    if alias is not None:
        entry = next((a for a in lineage.aliases() if a["alias"] == alias), None)
        if entry is None:
            return Check(False, f"alias {alias!r} points at no adapter")
        row, path = resolve_adapter(lineage, entry["adapter_id"])
        expected = entry["files_sha256"]
        accepted = set(filter(None, (entry.get("accepted_inconclusive") or "").split(",")))
    else:
        row, path = resolve_adapter(lineage, str(ref))
    adapter_id = row["adapter_id"]
    name = f"{alias} -> {adapter_id[:12]}" if alias else adapter_id[:12]
    broken = integrity_problem(adapter_id, path)
    if broken:
        return Check(False, f"{name}: {broken}", adapter_id)
    digest = files_digest(path)
    if expected is not None and digest != expected:
        why = (
            f"{name}: files in {path} differ from the ones registered "
            f"(digest {digest[:12]}, registered {str(expected)[:12]})"
        )
        return Check(False, why, adapter_id)
    problems = gate_problems(lineage, adapter_id, digest, accept_inconclusive=bool(accepted))
    inconclusive = set(inconclusive_gates(lineage, adapter_id))
    unaccepted = inconclusive - accepted
    problems += [f"gate {g} inconclusive, not accepted for this alias" for g in sorted(unaccepted)
                 if accepted]  # fmt: skip
    if problems:
        return Check(False, f"{name}: " + "; ".join(problems), adapter_id)
    n = len(lineage.latest_gates(adapter_id))
    taken = sorted(inconclusive & accepted)
    items = items_used(lineage, adapter_id)
    if taken:
        return Check(True, f"{name}: files match the registry, gates passed but {', '.join(taken)}"
                     f" inconclusive, accepted by {alias}'s policy{items}", adapter_id)  # fmt: skip
    return Check(True, f"{name}: files match the registry, all {n} gates passed{items}", adapter_id)


def items_used(lineage: Lineage, adapter_id: str) -> str:
    """ " (items: heldout_gain 100, general_piqa 200 at look 2 of 5, ...)": what each decision
    rested on, so a release log shows which gates stopped early (empty if none recorded)."""
    parts = [f"{g['gate']} {g['n_items']}" + (f" at look {g['look']} of {g['looks']}"
             if g["look"] is not None else "")
             for g in lineage.latest_gates(adapter_id) if g["n_items"] is not None]  # fmt: skip
    return f" (items: {', '.join(parts)})" if parts else ""
