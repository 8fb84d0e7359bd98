"""Operator commands against a running deployment: ``status`` (from Redis), ``resume`` and ``rules reload`` (control
messages on the control topic, which every worker reads; the resume is recorded in the audit trail as a
``resolved`` decision with ``cause: operator_resume``, the operator and the reason)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
import uuid
from typing import Any

import orjson

from rules.exceptions import RollguardError
from streams.security import kafka_python_config, redis_kwargs
from streams.settings import Settings
from streams.kafka.topics import Topics

__all__ = ["add_ops_parsers", "read_status", "send_control", "resume_message", "reload_message", "signoff_message",
           "signed", "render_status", "render_promotion", "rule_state"]


def reload_message(now_ms: int) -> dict:
    """A reload control; ``event_id`` and ``ts`` make each signed reload distinct (its signature covers them)."""
    return {"type": "control", "action": "reload", "event_id": f"reload-{uuid.uuid4().hex}", "ts": now_ms}


def resume_message(feature: str, phase: str | None, reason: str, operator: str | None, now_ms: int) -> dict:
    msg = {"type": "control", "action": "resume", "event_id": f"resume-{uuid.uuid4().hex}", "ts": now_ms,
           "feature": feature, "reason": reason}  # fmt: skip
    if phase:
        msg["phase"] = phase
    if operator:
        msg["operator"] = operator
    return msg


def signoff_message(feature: str, phase: str, role: str, reason: str, operator: str | None, now_ms: int,
                    revoke: bool = False) -> dict:  # fmt: skip
    msg = {"type": "control", "action": "signoff", "event_id": f"signoff-{uuid.uuid4().hex}", "ts": now_ms,
           "feature": feature, "phase": phase, "role": role, "reason": reason}  # fmt: skip
    if operator:
        msg["operator"] = operator
    if revoke:
        msg["revoke"] = True
    return msg


def signed(msg: dict, s: Settings) -> dict:
    """``msg`` signed with the operator key (``ROLLGUARD_OPERATOR_KEY`` under ``_KEY_ID``), or as is without one."""
    if s.operator_key is None:
        return msg
    from rules.control_auth import sign_control

    return sign_control(msg, s.operator_key_id, s.operator_key.get_secret_value().encode())


def send_control(bootstrap: str, topics: Topics, key: str, msg: dict, timeout_s: float = 15.0,
                 **client: Any) -> Any:  # fmt: skip
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_block_ms=int(timeout_s * 1000), **client)
        md = p.send(topics.control, key=key.encode(), value=orjson.dumps(msg)).get(timeout=timeout_s)
        p.close(timeout=timeout_s)
        return md
    except KafkaError as e:
        raise RollguardError(f"cannot publish to {topics.control} at {bootstrap}: {e}") from e


async def read_status(redis_url: str, namespace: str, cluster: bool = False, **client: Any) -> list[dict]:
    from streams.live.store import RedisStore, redis_client

    r = redis_client(redis_url, cluster, **client)
    try:
        store = RedisStore(r, namespace)
        features = await store.features()
        summaries = await store.summaries(features)
        breaker = await store.load_breaker()
    finally:
        await r.aclose()
    out = [summaries[f] for f in features if f in summaries]
    for s in out:
        s["breaker_kills_by_hour"] = {str(h): len(ids) for h, ids in sorted(breaker.kills.items())[-3:]}
    return out


def rule_state(rule: dict) -> str:
    """A rule's state as status shows it: ``firing``, ``pending``, and ``firing (shadow)`` for a shadow rule, which
    is evaluated and recorded but raises no tier, latches nothing and pages no one.

    >>> rule_state({"state": "firing"}), rule_state({"state": "firing", "mode": "shadow"})
    ('firing', 'firing (shadow)')
    """
    return rule["state"] + (" (shadow)" if rule.get("mode") == "shadow" else "")


def render_status(rows: list[dict], now_ms: int) -> str:
    if not rows:
        return "no feature state yet (has a worker processed events?)"
    lines = [f"{'FEATURE':<24} {'PHASE':<16} {'TIER':<12} {'LATCH':<6} {'WATERMARK':<21} {'UPDATED':>8}  ACTIVE RULES"]
    for s in rows:
        age = f"{(now_ms - s['updated_ms']) / 1000:.0f}s ago"
        for phase, p in sorted(s["phases"].items()) or [("-", {"tier": "ok", "latch": None, "rules": []})]:
            rules = ", ".join(
                f"{r['rule_id']}({r['tier']},{rule_state(r)}{',held' if r['held'] else ''}"
                + (f",{'/'.join(r['group'])}" if r["group"] else "") + ")"
                for r in p["rules"]
            )  # fmt: skip
            lines.append(f"{s['feature']:<24} {phase:<16} {p['tier'].upper():<12} {p['latch'] or '-':<6} "
                         f"{(s['watermark'] or '-')[:20]:<21} {age:>8}  {rules or '-'}")  # fmt: skip
    promos = [(s["feature"], ph, pr) for s in rows for ph, p in sorted(s["phases"].items())
              for pr in p.get("promotions", ())]  # fmt: skip
    if promos:
        lines.append("")
        lines.append("promotions (rules.md §4.14; sign off with `rollguard signoff`):")
        for f, ph, pr in promos:
            lines.extend(render_promotion(f, ph, pr))
    starved = [(s["feature"], ph, r) for s in rows for ph, p in sorted(s["phases"].items())
               for r in p.get("starved", ())]  # fmt: skip
    if starved:
        lines.append("")
        lines.append("starved rules (too little data to decide for longer than max_starved, see docs/oncall.md):")
        for f, ph, r in starved:
            group = f" [{'/'.join(r['group'])}]" if r["group"] else ""
            lines.append(f"  {f}/{ph}: {r['ruleset']}/{r['rule_id']}{group} since {r['since']}")
    clocks = [(s["feature"], s["clock"]) for s in rows if s.get("clock") and (any(s["clock"]["outliers"].values())
                                                                             or s["clock"]["held"])]  # fmt: skip
    if clocks:
        lines.append("")
        lines.append("producer clocks (events with implausible times, see docs/oncall.md):")
        for f, c in clocks:
            n = sum(c["outliers"].values())
            by = ", ".join(f"{k} {v:,}" for k, v in sorted(c["outliers"].items()) if v)
            lines.append(f"  {f}: {n:,} quarantined as ts_outlier ({by or 'none'}), {c['held']:,} held"
                         + ("; clock-skew page open" if c["skew_paged"] else ""))
    return "\n".join(lines)


def render_promotion(feature: str, phase: str, pr: dict) -> list[str]:
    """A promotion verdict as a checklist: one line per gate, exposure, hold, sign-off and latch.

    >>> pr = {"ruleset": "beta", "verdict": "blocked", "at": "2026-11-16T01:00:00Z", "to": "ga", "latch": None,
    ...       "gates": [{"rule_id": "gate-acc", "status": "pass", "value": 0.18, "op": "<", "threshold": 0.15}],
    ...       "exposure": {"time_in_phase": "14d1h", "min_time": "14d"}, "hold": {"since": None, "hold_for": "0s"},
    ...       "signoffs": {"required": ["pm", "legal"], "missing": ["legal"], "signed": {"pm": {"operator": "ann",
    ...       "at": "2026-11-04T10:30:00Z"}}}, "waiting": []}
    >>> print("\\n".join(render_promotion("f", "beta", pr)))
      f/beta -> ga: BLOCKED (beta, at 2026-11-16T01:00:00Z)
        [x] gate gate-acc: 0.18 (fails when < 0.15)
        [x] in phase 14d1h (needs 14d)
        [x] sign-off pm: ann at 2026-11-04T10:30:00Z
        [ ] sign-off legal: missing
    """

    def box(ok: bool) -> str:
        return "[x]" if ok else "[ ]"

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    out = [f"  {feature}/{phase} -> {pr['to']}: {pr['verdict'].upper()} ({pr['ruleset']}, at {pr['at']})"]
    if pr.get("latch"):
        out.append(f"    [ ] phase is {'killed' if pr['latch'] == 'kill' else 'paused'} (an operator resume lifts it)")
    for g in pr["gates"]:
        line = "{lo}..{hi}".format(lo=num(g["threshold"]), hi=num(g["threshold_high"])) if "threshold_high" in g \
            else f"{g['op']} {num(g['threshold'])}"  # fmt: skip
        mark = "[?]" if g["status"] == "inconclusive" else box(g["status"] == "pass")
        why = f"; {g['why']}" if g.get("why") else ""
        out.append(f"    {mark} gate {g['rule_id']}: {num(g['value'])} (fails when {line}{why})")
    e = pr["exposure"]
    out.append(f"    {box(not any(w.startswith('phase has run') for w in pr['waiting']))} in phase "
               f"{e['time_in_phase']} (needs {e['min_time']})")  # fmt: skip
    for name in ("interactions", "users"):
        if name in e:
            out.append(f"    {box(e[name] >= e[f'min_{name}'])} {e[name]:,} {name} (needs {e[f'min_{name}']:,})")
    hold = pr["hold"]
    if hold["hold_for"] != "0s":
        out.append(f"    {box(not any(w.startswith('holding') for w in pr['waiting']) and hold['since'] is not None)} "
                   f"held {hold['hold_for']} (since {hold['since'] or '-'})")  # fmt: skip
    for role in pr["signoffs"]["required"]:
        s = pr["signoffs"]["signed"].get(role)
        who = f"{s.get('operator', 'signed')} at {s['at']}" if s else "missing"
        out.append(f"    {box(s is not None)} sign-off {role}: {who}")
    return out


def _settings() -> Settings:
    return Settings()


def cmd_status(args: argparse.Namespace) -> int:
    s = _settings()
    url = args.redis_url or s.redis_url
    if not url:
        print("rollguard: error: set ROLLGUARD_REDIS_URL or --redis-url", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(read_status(url, args.namespace or s.state_namespace, s.redis_cluster, **redis_kwargs(s)))
    except OSError as e:
        print(f"rollguard: error: cannot read Redis at {url}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - redis errors are not OSError subclasses
        print(f"rollguard: error: cannot read Redis at {url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.feature:
        rows = [r for r in rows if r["feature"] == args.feature]
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        print(render_status(rows, int(time.time() * 1000)))
    return 0


def _control_target(args: argparse.Namespace) -> tuple[str, Topics, dict[str, Any]] | None:
    """Where control messages go: bootstrap, topics, and the Kafka client's security settings."""
    s = _settings()
    bootstrap = args.bootstrap or s.kafka_bootstrap
    if not bootstrap:
        print("rollguard: error: set ROLLGUARD_KAFKA_BOOTSTRAP or --bootstrap", file=sys.stderr)
        return None
    return bootstrap, Topics(args.topic_prefix if args.topic_prefix is not None else s.topic_prefix), \
        kafka_python_config(s)


def _send_operator_control(args: argparse.Namespace, what: str, why: str, build) -> tuple[dict, Any] | None:
    """Validate, sign and send a control built by ``build(reason, now_ms)`` (a resume, a sign-off); None after printing
    why it was not sent. The worker would dead-letter an invalid one: it is refused here instead."""
    target = _control_target(args)
    if target is None:
        return None
    if not args.reason.strip():
        print(f"rollguard: error: --reason must say {why} (it goes to the audit trail)", file=sys.stderr)
        return None
    msg = build(args.reason.strip(), int(time.time() * 1000))
    from rules.events import EventParser, Pseudonymizer

    try:
        EventParser(Pseudonymizer(b"validation-only-key")).parse_obj(msg)
    except RollguardError as e:
        print(f"rollguard: error: invalid {what}: {e}", file=sys.stderr)
        return None
    bootstrap, topics, client = target
    msg = signed(msg, _settings())
    return msg, send_control(bootstrap, topics, args.feature, msg, **client)


def cmd_resume(args: argparse.Namespace) -> int:
    sent = _send_operator_control(args, "resume", "why", lambda reason, now: resume_message(
        args.feature, args.phase, reason, args.operator, now))  # fmt: skip
    if sent is None:
        return 2
    msg, md = sent
    where = f"phase {args.phase}" if args.phase else "all phases"
    print(f"resume of {args.feature} ({where}) sent as {msg['event_id']} to {md.topic}@{md.offset}; "
          "the owning worker clears the latches and records it" + _signed_note(msg))  # fmt: skip
    return 0


def cmd_signoff(args: argparse.Namespace) -> int:
    sent = _send_operator_control(args, "signoff", "what was reviewed", lambda reason, now: signoff_message(
        args.feature, args.phase, args.role, reason, args.operator, now, args.revoke))  # fmt: skip
    if sent is None:
        return 2
    msg, md = sent
    what = "revocation of the sign-off" if args.revoke else "sign-off"
    print(f"{what} of {args.feature}/{args.phase} by role {args.role} sent as {msg['event_id']} to "
          f"{md.topic}@{md.offset}; the owning worker records it and the promotion counts it from its time on"
          + _signed_note(msg))  # fmt: skip
    return 0


def _signed_note(msg: dict) -> str:
    if "signature" in msg:
        return f" (signed with operator key {msg['key_id']})"
    return " (unsigned: workers with ROLLGUARD_OPERATOR_KEYS refuse it; set ROLLGUARD_OPERATOR_KEY)"


def cmd_reload(args: argparse.Namespace) -> int:
    target = _control_target(args)
    if target is None:
        return 2
    bootstrap, topics, client = target
    msg = signed(reload_message(int(time.time() * 1000)), _settings())
    md = send_control(bootstrap, topics, "reload", msg, **client)
    print(f"reload requested on {md.topic}@{md.offset}; every worker re-reads its rules folder" + _signed_note(msg))
    return 0


def add_ops_parsers(sub: Any, rules_sub: Any) -> None:
    st = sub.add_parser("status", help="current tier, latches and active rules per feature/phase (from Redis)")
    st.add_argument("feature", nargs="?", help="only this feature")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--redis-url", help="default: ROLLGUARD_REDIS_URL")
    st.add_argument("--namespace", help="default: ROLLGUARD_STATE_NAMESPACE")
    st.set_defaults(func=cmd_status)

    rs = sub.add_parser("resume", help="operator resume: clear the pause/kill latch of a feature (control message)")
    rs.add_argument("feature")
    rs.add_argument("--phase", help="only this phase (default: every phase)")
    rs.add_argument("--reason", required=True, help="why it is safe to resume (recorded in the audit trail)")
    rs.add_argument("--operator", default=_whoami(), help="who resumes (default: the login name)")
    rs.add_argument("--bootstrap", help="default: ROLLGUARD_KAFKA_BOOTSTRAP")
    rs.add_argument("--topic-prefix", help="default: ROLLGUARD_TOPIC_PREFIX")
    rs.set_defaults(func=cmd_resume)

    so = sub.add_parser("signoff", help="record (or --revoke) a role's sign-off of a phase's promotion (control message)")
    so.add_argument("feature")
    so.add_argument("--phase", required=True, help="the phase signed off (the one a promotion block promotes from)")
    so.add_argument("--role", required=True, help="the role signing, as the promotion block lists it (pm, legal, ...)")
    so.add_argument("--reason", required=True, help="what was reviewed (recorded in the audit trail)")
    so.add_argument("--operator", default=_whoami(), help="who signs (default: the login name)")
    so.add_argument("--revoke", action="store_true", help="withdraw this role's sign-off instead")
    so.add_argument("--bootstrap", help="default: ROLLGUARD_KAFKA_BOOTSTRAP")
    so.add_argument("--topic-prefix", help="default: ROLLGUARD_TOPIC_PREFIX")
    so.set_defaults(func=cmd_signoff)

    rl = rules_sub.add_parser("reload", help="ask every worker to re-read its rules folder (control message)")
    rl.add_argument("--bootstrap", help="default: ROLLGUARD_KAFKA_BOOTSTRAP")
    rl.add_argument("--topic-prefix", help="default: ROLLGUARD_TOPIC_PREFIX")
    rl.set_defaults(func=cmd_reload)


def _whoami() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return None
