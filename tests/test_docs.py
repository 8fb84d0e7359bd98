"""docs/rules.md and docs/oncall.md stay true to the code they describe.

Both pages are read as data: every rule file shown in rules.md is loaded with the real loader (and the catalogue
excerpts must equal the catalogue), every ``rollguard ...`` command line in a code block must parse with the real
CLI parser, every Grafana link must name a generated dashboard, every reference table (top-level keys, rule keys,
defaults, metrics, drift detectors and signals, summary fields) must list exactly what the loader accepts, every
``rollguard_*`` metric named must be one the worker exports, the example page must be what the page builder makes of
its own values, the suggested Prometheus alerts must pass ``promtool check rules``, every relative link of every
Markdown file in the repository must lead to an existing file and heading inside it, and no doc names a path outside
the repository; docs/contract.md keeps the v1 contract's sections and states every extension README summarises.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytest
import yaml

from detectors import DETECTORS
from rules import loader
from rules.loader import CATALOG, RulesInvalid, load_rules, load_rules_text
from rules.metric_names import METRICS, PARAM_OPTIONAL, SHARE_FIELDS, is_rate_metric, parse_metric
from rules.metrics import metric_sources
from rules.model import SUMMARY_FIELDS, Signal
from rules.outputs import page
from streams.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RULES_DOC = DOCS / "rules.md"
ONCALL_DOC = DOCS / "oncall.md"
BOTH = (RULES_DOC, ONCALL_DOC)
EXPORTERS = (ROOT / "streams" / "live" / "observability.py", ROOT / "streams" / "live" / "rule_series.py",
             ROOT / "streams" / "pager" / "metrics.py")

# Stand-ins for what a reader fills in: shell variables ($SINCE) and <PLACEHOLDERS> in command lines.
PLACEHOLDERS = {
    "SINCE": "2026-11-02T00:00:00Z",
    "UNTIL": "2026-11-03T00:00:00Z",
    "FEATURE": "email-reply",
    "PHASE": "closed_beta",
    "BOOTSTRAP": "kafka-1:9092",
    "DIR": "out/docs",
}
# The subcommands the two pages must show (the rule-change workflow and the on-call toolbox).
REQUIRED_COMMANDS = {
    "rules validate", "rules test", "replay", "dashboards build", "rules reload", "status", "resume", "verify",
    "audit verify", "audit head", "pager",
}  # fmt: skip
# A parameter for the parameterised metric families of the metric table (`flag_rate:<flag>`).
METRIC_PARAM = "pii_leak"


# --- reading markdown ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string, text (de-indented), first line number and the marker comment before it."""

    lang: str
    text: str
    line: int
    marker: str | None


def code_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"(\s*)```(\w*)\s*", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i + 1
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = before[5:-4] if before.startswith("<!-- ") and before.endswith(" -->") else None
        i += 1
        body = []
        while not re.fullmatch(r"\s*```\s*", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        blocks.append(Block(lang, "\n".join(body) + "\n", start + 1, marker))
        i += 1
    return blocks


def prose(path: Path) -> list[str]:
    """The lines outside fenced code blocks (headings, tables, text)."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if re.fullmatch(r"\s*```\w*\s*", line):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def table_after(path: Path, marker: str) -> list[list[str]]:
    """The body rows (cells stripped) of the table that follows ``<!-- marker -->``."""
    lines = path.read_text().splitlines()
    start = lines.index(f"<!-- {marker} -->") + 1
    rows = []
    for line in lines[start + 2 :]:  # header and separator
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert rows, f"{path.name}: no table after <!-- {marker} -->"
    return rows


def first_column_names(path: Path, marker: str) -> list[str]:
    """Every backticked name in the first column of the table after ``marker``."""
    return [name for row in table_after(path, marker) for name in re.findall(r"`([^`]+)`", row[0])]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings; a repeated heading gets ``-1``, ``-2``, … as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose(path):
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


# --- rule files in rules.md ----------------------------------------------------------------------------------------


def rule_file_blocks() -> list[Block]:
    """The yaml blocks of rules.md that are rule files (a document with ``rules:``), except the invalid example."""
    found = []
    for b in code_blocks(RULES_DOC):
        if b.lang != "yaml" or b.marker == "invalid-example":
            continue
        docs = [d for d in yaml.safe_load_all(b.text) if d is not None]
        if any(isinstance(d, dict) and "rules" in d for d in docs):
            found.append(b)
    return found


RULE_FILES = rule_file_blocks()


@pytest.fixture(scope="module")
def catalog():
    return {rs.name: rs for rs in load_rules([CATALOG])}


def test_rules_md_shows_rule_files():
    assert len(RULE_FILES) >= 20  # the extractor found the examples (a broken fence would hide them all)


@pytest.mark.parametrize("block", RULE_FILES, ids=lambda b: f"rules.md:{b.line}")
def test_every_rule_file_shown_is_valid(block):
    try:
        load_rules_text(block.text, source=f"docs/rules.md:{block.line}")
    except RulesInvalid as e:
        pytest.fail(f"the example at docs/rules.md:{block.line} does not load:\n{e}")


@pytest.mark.parametrize("block", RULE_FILES, ids=lambda b: f"rules.md:{b.line}")
def test_catalogue_excerpts_equal_the_catalogue(block, catalog):
    for shown in load_rules_text(block.text):
        real = catalog.get(shown.name)
        if real is None:
            assert shown.name.startswith("example-"), f"{shown.name}: not a catalogue rule set; name it example-*"
            continue
        assert (shown.features, shown.phases) == (real.features, real.phases), shown.name
        by_id = {r.id: r for r in real.rules}
        for rule in shown.rules:
            assert rule.id in by_id, f"{shown.name}/{rule.id} is not in the catalogue"
            assert rule.model_dump(exclude={"line"}) == by_id[rule.id].model_dump(exclude={"line"}), (
                f"docs/rules.md:{block.line}: {shown.name}/{rule.id} differs from rules/catalog"
            )


def test_every_catalogue_pack_has_an_excerpt(catalog):
    shown = {rs.name for b in RULE_FILES for rs in load_rules_text(b.text)}
    assert set(catalog) <= shown, f"packs without an excerpt in docs/rules.md: {sorted(set(catalog) - shown)}"


def test_the_invalid_example_reports_the_errors_shown():
    [bad] = [b for b in code_blocks(RULES_DOC) if b.marker == "invalid-example"]
    [shown] = [b for b in code_blocks(RULES_DOC) if b.marker == "invalid-example-errors"]
    with pytest.raises(RulesInvalid) as e:
        load_rules_text(bad.text, source="typos.yaml")
    errors = [str(err) for err in e.value.errors]
    assert shown.text.splitlines() == errors + [f"{len(errors)} error(s)"]


# --- reference tables ----------------------------------------------------------------------------------------------

# The loader's key lists are what it accepts; the tables must list exactly those.
TABLES = [
    ("top-keys-table", loader._TOP_KEYS),
    ("rule-keys-table", loader._RULE_KEYS),
    ("defaults-table", loader._DEFAULT_KEYS),
    ("detectors-table", DETECTORS),
    ("signals-table", get_args(Signal)),
]


@pytest.mark.parametrize("marker, accepted", TABLES, ids=[t[0] for t in TABLES])
def test_reference_table_lists_exactly_what_the_loader_accepts(marker, accepted):
    names = first_column_names(RULES_DOC, marker)
    assert sorted(set(names)) == sorted(accepted)
    assert len(names) == len(set(names)), f"{marker}: a key is listed twice"


def test_summary_fields_table_lists_every_field():
    cells = first_column_names(RULES_DOC, "summary-fields-table")
    names = {field for cell in cells for field in re.findall(r"\{(\w+)\}", cell)}
    assert names == set(SUMMARY_FIELDS)


def _metric_rows() -> list[list[str]]:
    return table_after(RULES_DOC, "metric-table")


def _concrete(name: str) -> str:
    """``flag_rate:<flag>`` as a rule would write it (a share's ``<x>`` as a number)."""
    if name.startswith("share_"):
        return name.replace("<x>", "0.5")
    if "<span>" in name:
        return name.replace("<span>", "2h")
    return re.sub(r"<\w+>", METRIC_PARAM, name)


METRIC_ROWS = _metric_rows()


@pytest.mark.parametrize("row", METRIC_ROWS, ids=lambda r: r[0].strip("`"))
def test_metric_table_row_is_accepted_and_described_as_the_engine_computes_it(row):
    name = re.fullmatch(r"`([^`]+)`", row[0]).group(1)
    metric = _concrete(name)
    op, threshold = (">", 0.5)  # a valid line for rates and non-rates alike
    text = (f'version: 1\nname: t\nfeatures: ["*"]\nrules:\n  - {{id: m, tier: investigate, metric: "{metric}", '
            f'op: "{op}", threshold: {threshold}, window: 1m}}\n')  # fmt: skip
    load_rules_text(text)
    reads = {part.strip() for part in row[1].split(",")}
    assert reads == set(metric_sources(*parse_metric(metric))), f"{name}: reads {row[1]!r}"
    assert row[4] == ("yes" if is_rate_metric(metric) else "no"), f"{name}: rate column {row[4]!r}"


def test_metric_table_covers_every_metric():
    def spelling(name: str) -> str:
        return re.sub(r"<\w+>", "<param>", name)

    expected = set()
    for base, info in METRICS.items():
        if base in ("share_ge", "share_lt"):  # one row per field: the field decides what the metric reads
            expected.update(f"{base}:{field}:<param>" for field in SHARE_FIELDS)
            continue
        if not info.parameterised or base in PARAM_OPTIONAL:
            expected.add(base)
        if info.parameterised:
            expected.add(f"{base}:<param>")
    shown = [spelling(re.fullmatch(r"`([^`]+)`", row[0]).group(1)) for row in METRIC_ROWS]
    assert sorted(shown) == sorted(expected)


# --- command lines -------------------------------------------------------------------------------------------------


def _substitute(line: str) -> str:
    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in PLACEHOLDERS:
            pytest.fail(f"no stand-in for {m.group(0)} in {line!r}: add it to PLACEHOLDERS")
        return PLACEHOLDERS[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)|<([A-Z_]+)>", var, line)


def command_lines(path: Path) -> list[tuple[str, str]]:
    """``(where, line)`` for every ``rollguard`` / ``./dev rollguard`` line of the shell blocks of ``path``."""
    found = []
    for b in code_blocks(path):
        if b.lang not in ("bash", "sh", "shell", "console", ""):
            continue
        joined = b.text.replace("\\\n", " ")
        for n, line in enumerate(joined.splitlines()):
            line = line.strip()
            if line.startswith(("rollguard ", "./dev rollguard ")):
                found.append((f"{path.name}:{b.line + n}", line))
    return found


COMMANDS = [c for path in BOTH for c in command_lines(path)]


@pytest.mark.parametrize("where, line", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_line_parses(where, line, capsys):
    argv = shlex.split(_substitute(line), comments=True)
    if argv[0] == "./dev":
        argv = argv[1:]
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{line}` does not parse:\n{capsys.readouterr().err}")


def test_the_docs_show_the_workflow_and_toolbox_commands():
    shown = set()
    for _, line in COMMANDS:
        words = [w for w in shlex.split(_substitute(line), comments=True) if w != "./dev"][1:]
        shown.add(words[0])
        if len(words) > 1 and not words[1].startswith("-"):
            shown.add(f"{words[0]} {words[1]}")
    assert REQUIRED_COMMANDS <= shown, f"not shown: {sorted(REQUIRED_COMMANDS - shown)}"


def test_the_replay_of_last_week_compares_candidate_rules_from_kafka():
    replays = [line for where, line in COMMANDS if where.startswith("rules.md") and " replay " in f" {line} "]
    args = [build_parser().parse_args(shlex.split(_substitute(line), comments=True)[1:]) for line in replays]
    assert any(a.from_kafka and a.since is not None and a.compare for a in args)


# --- dashboards ----------------------------------------------------------------------------------------------------


def _dashboards() -> dict[str, str]:
    """uid -> title of every generated dashboard."""
    out = {}
    for f in sorted((ROOT / "dashboards").glob("*.json")):
        d = json.loads(f.read_text())
        d = d.get("dashboard", d)
        out[d["uid"]] = d["title"]
    return out


def _grafana_links(path: Path) -> list[tuple[str, str | None]]:
    return re.findall(r"https://GRAFANA/d/([^/?#\])\s]+)(?:/([^?#\])\s]+))?", path.read_text())


LINKS = sorted({(path.name, uid, slug_) for path in BOTH for uid, slug_ in _grafana_links(path)})


@pytest.mark.parametrize("doc, uid, link_slug", LINKS, ids=[f"{d}:{u}" for d, u, _ in LINKS])
def test_every_dashboard_link_names_a_generated_dashboard(doc, uid, link_slug):
    dashboards = _dashboards()
    assert uid in dashboards, f"{doc}: no dashboard with uid {uid!r} in dashboards/*.json"
    title_slug = re.sub(r"[^a-z0-9]+", "-", dashboards[uid].lower()).strip("-")
    assert link_slug == title_slug, f"{doc}: link to {uid} should end in /{title_slug}"


def test_oncall_links_every_dashboard():
    linked = {uid for uid, _ in _grafana_links(ONCALL_DOC)}
    assert set(_dashboards()) <= linked, f"not linked from oncall.md: {sorted(set(_dashboards()) - linked)}"


# --- metric names, page classes, links -----------------------------------------------------------------------------


def _exported() -> set[str]:
    text = "".join(p.read_text() for p in EXPORTERS)
    return set(re.findall(r'"(rollguard_[a-z0-9_]+)"', text))


def _alertnames() -> set[str]:
    """Alertmanager alert names of the pages that are not rule pages (``rollguard_kill_breaker``, ...): named in the
    docs like metrics, but they are alerts (streams/pager/receivers.py)."""
    from streams.pager.receivers import alertname
    from streams.pager.pages import Page

    def named(cls: str) -> str:
        return alertname(Page.model_validate({"event_action": "trigger", "dedup_key": "k", "payload": {
            "summary": "s", "source": "rollguard", "severity": "critical", "timestamp": "2026-11-02T00:00:00Z",
            "class": cls}}))  # fmt: skip

    return {named("kill-breaker"), named("monitor-degraded")}


PROM_NAMES = sorted({(path.name, n) for path in BOTH for n in re.findall(r"\brollguard_[a-z0-9_]+", path.read_text())
                     if n not in _alertnames()})  # fmt: skip


@pytest.mark.parametrize("doc, name", PROM_NAMES, ids=[f"{d}:{n}" for d, n in PROM_NAMES])
def test_every_prometheus_metric_named_is_exported(doc, name):
    base = name.removesuffix("_total")  # counters are registered without it
    assert base in _exported(), f"{doc}: {name} is not a metric the worker exports"


@pytest.mark.parametrize(
    "page_class, source",
    [("kill-breaker", "rules/policy.py"), ("monitor-degraded", "streams/live/publishing.py")],
)
def test_page_classes_named_in_oncall_are_the_ones_sent(page_class, source):
    assert f'"class": "{page_class}"' in (ROOT / source).read_text()
    assert f"class `{page_class}`" in ONCALL_DOC.read_text()


def test_the_page_shown_in_oncall_has_the_shape_rollguard_sends():
    """The example page, rebuilt from its own values by the code that builds pages, comes out the same."""
    [block] = [b for b in code_blocks(ONCALL_DOC) if b.lang == "json"]
    shown = json.loads(block.text)
    payload, details = shown["payload"], shown["payload"]["custom_details"]
    start, end = details["window"].split(" .. ")
    dec = {
        "feature": payload["component"], "phase": payload["group"], "ruleset": details["ruleset"],
        "rule_id": payload["class"], "group": details["segment_group"], "summary": payload["summary"],
        "tier": details["tier"], "ts": payload["timestamp"], "metric": details["metric"], "value": details["value"],
        "threshold": details["threshold"], "op": details["op"], "samples": details["samples"], "window_start": start,
        "window_end": end, "decision_id": details["decision_id"], "runbook": shown["links"][0]["href"],
    }  # fmt: skip
    sent = page(action=shown["event_action"], dec=dec, incident=0)
    assert sent.pop("dedup_key").startswith("rollguard-")  # the incident's hash; the example's comes from a replay
    assert sent == {k: v for k, v in shown.items() if k != "dedup_key"}


# Every Markdown file of the repository: the docs, the README, the catalogue's notes, golden reports. Not what tools
# and runs leave behind (hidden folders such as .venv, build output, replay output in out/).
_NOT_THE_REPOSITORY = {"out", "build", "dist", "__pycache__"}


def markdown_files() -> list[Path]:
    return sorted(
        p for p in ROOT.rglob("*.md")
        if not any(part.startswith(".") or part in _NOT_THE_REPOSITORY or part.endswith(".egg-info")
                   for part in p.relative_to(ROOT).parts[:-1])
    )  # fmt: skip


_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target) or ![alt](target "title")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # https:, mailto:, … (a Windows drive letter is not a concern)


def links_of(path: Path) -> list[str]:
    """The link targets of ``path``'s prose: fenced code is not prose, and an inline code span is not a link."""
    return [target for line in prose(path) for target in _LINK.findall(re.sub(r"`[^`]*`", "", line))]


def _relative_links() -> list[tuple[str, str]]:
    return sorted({(p.relative_to(ROOT).as_posix(), t) for p in markdown_files() for t in links_of(p)
                   if not _SCHEME.match(t)})  # fmt: skip


REL_LINKS = _relative_links()


def test_the_link_check_reads_every_doc():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/contract.md", "docs/rules.md", "docs/oncall.md", "rules/catalog/README.md"} <= names
    assert not any(n.startswith(".venv/") for n in names)
    linked = {doc for doc, _ in REL_LINKS}
    assert {"README.md", "docs/contract.md", "docs/rules.md", "rules/catalog/README.md"} <= linked


@pytest.mark.parametrize("doc, target", REL_LINKS, ids=[f"{d}:{t}" for d, t in REL_LINKS])
def test_every_relative_link_leads_to_a_file_and_heading_inside_the_repository(doc, target):
    file, _, anchor = target.partition("#")
    source = ROOT / doc
    dest = (source.parent / file).resolve() if file else source
    assert dest == ROOT or ROOT in dest.parents, f"{doc}: {target} leaves the repository"
    assert dest.exists(), f"{doc}: {target} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{doc}: {target}: an anchor into a file that is not Markdown"
        assert anchor in anchors(dest), f"{doc}: no heading #{anchor} in {dest.relative_to(ROOT)}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_doc_names_a_path_outside_the_repository(path):
    """Not as a link, not in code: a clone has no ../shared and no /work."""
    outside = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)
               if re.search(r"(?<![\w.-])(?:/work/|(?:\.\./)+shared\b)", line)]  # fmt: skip
    assert not outside, f"{path.relative_to(ROOT)} names paths outside the repository: {outside}"


def test_the_contract_keeps_v1_and_lists_the_extensions():
    """docs/contract.md is v1 (sections 1-5) plus an Extensions section that states what README summarises."""
    text = (DOCS / "contract.md").read_text()
    headings = [line for line in prose(DOCS / "contract.md") if line.startswith("## ")]
    assert headings == ["## 1. Input events", "## 2. Metrics", "## 3. Rule files (YAML)", "## 4. Outputs",
                        "## 5. Command line", "## 6. Extensions"]  # fmt: skip
    extensions = text.split("## 6. Extensions", 1)[1]
    readme = (ROOT / "README.md").read_text().split("## Contract extensions", 1)[1]
    named = set(re.findall(r"`([a-z_]+)`", readme)) - {"status", "resume", "emit", "verify", "annotate", "test",
                                                          "reload", "worker", "head", "default"}  # fmt: skip
    assert named, "README's Contract extensions names no field"
    missing = sorted(n for n in named if f"`{n}`" not in extensions)
    assert not missing, f"docs/contract.md §6 does not state: {missing}"
    parser = build_parser()
    subcommands = {name for a in parser._subparsers._group_actions for name in a.choices}
    missing = sorted(c for c in subcommands - {"replay"} if f"`{c}" not in extensions)
    assert not missing, f"docs/contract.md §6.4 does not list the subcommands {missing}"


# --- the suggested Prometheus alerts -------------------------------------------------------------------------------


def test_the_suggested_prometheus_alerts_pass_promtool(tmp_path):
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    [block] = [b for b in code_blocks(ONCALL_DOC) if b.lang == "yaml" and b.text.startswith("groups:")]
    rules_file = tmp_path / "rollguard.yml"
    rules_file.write_text(block.text)
    done = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
