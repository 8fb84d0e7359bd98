"""Panel and variable factories shared by every rollguard dashboard, on grafana-foundation-sdk builders.

Every panel and query points at the ``datasource`` template variable, whose default is the Prometheus
datasource ``deploy/grafana/provisioning/datasources/prometheus.yaml`` provisions (uid :data:`PROMETHEUS_UID`), so
a provisioned Grafana opens the dashboards on the right datasource and another Grafana can pick its own.

Where the SDK (generated for Grafana 10.1) has no typed builder, the Grafana JSON is written as the SDK's own
untyped models: field overrides are ``DynamicConfigValue(id, value)`` pairs (Grafana's override format is
untyped), and table transformations are ``DataTransformerConfig(id, options)`` with a plain options dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from dashboards.provisioning import PROMETHEUS_UID

__all__ = [
    "DATASOURCE",
    "TIER_VALUES",
    "TIER_COLORS",
    "GRAFANA_ANNOTATIONS",
    "datasource_variable",
    "decision_annotations",
    "query_variable",
    "query",
    "instant_table_query",
    "timeseries_panel",
    "stat_panel",
    "state_timeline_panel",
    "table_panel",
    "tier_mappings",
    "value_mappings",
    "hide_columns",
    "prop",
]

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# rollguard_feature_tier's values (metric contract) and the colour each tier is shown in.
TIER_VALUES: Mapping[int, str] = {0: "ok", 1: "investigate", 2: "pause", 3: "kill"}
TIER_COLORS: Mapping[str, str] = {"ok": "green", "investigate": "yellow", "pause": "orange", "kill": "red"}


# Grafana's built-in annotation store: where ``rollguard annotate`` posts decisions and commands.
GRAFANA_ANNOTATIONS = dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")


def dashboard(title: str, uid: str, description: str, tags: Sequence[str], since: str, refresh: str) -> db.Dashboard:
    """A rollguard dashboard's common frame: UTC, shared crosshair, editable, the dropdown of rollguard dashboards."""
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(list(tags))
        .time(since, "now")
        .refresh(refresh)
        .timezone("utc")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .editable()
        .link(
            db.DashboardLink("rollguard")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["rollguard"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )


def decision_annotations(tags: Sequence[str]) -> db.AnnotationQuery:
    """The annotations ``rollguard annotate`` posts (tagged ``rollguard``, ``ruleset:…``, ``feature:…``...) carrying
    all of ``tags``: fired rules, held kills, commands, resolved incidents, marked on every time axis."""
    return (
        db.AnnotationQuery()
        .name("rollguard decisions")
        .datasource(GRAFANA_ANNOTATIONS)
        .enable(True)
        .icon_color("red")
        .target(db.AnnotationTarget().type("tags").tags(list(tags)).match_any(False).limit(200))
    )


def prop(id_: str, value: object) -> dm.DynamicConfigValue:
    """One field-override property (Grafana's override properties are untyped ``id``/``value`` pairs)."""
    return dm.DynamicConfigValue(id_val=id_, value=value)


def datasource_variable() -> db.DatasourceVariable:
    """``$datasource``: any Prometheus datasource, defaulting to the provisioned one."""
    return (
        db.DatasourceVariable("datasource")
        .label("Prometheus")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="Prometheus (rollguard)", value=PROMETHEUS_UID))
    )


def query_variable(name: str, label: str, label_query: str, description: str) -> db.QueryVariable:
    """A multi-value ``label_values`` variable with an *All* option matching everything (``.*``).

    The All value is the regex ``.*`` rather than Grafana's default alternation of the listed values, so it also
    matches series whose label is empty (``group=""`` for rules without ``group_by``), which ``label_values``
    never lists.
    """
    return (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(label_query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def query(ref_id: str, expr: str, legend: str) -> prometheus.Dataquery:
    """A range query (time series) with a legend."""
    return prometheus.Dataquery().ref_id(ref_id).expr(expr).legend_format(legend).range().datasource(DATASOURCE)


def instant_table_query(ref_id: str, expr: str) -> prometheus.Dataquery:
    """An instant query formatted as a table (one row per series, labels as columns)."""
    return (
        prometheus.Dataquery()
        .ref_id(ref_id)
        .expr(expr)
        .instant()
        .format(pm.PromQueryFormat.TABLE)
        .datasource(DATASOURCE)
    )


def _legend(table_mode: bool) -> cb.VizLegendOptions:
    legend = cb.VizLegendOptions().show_legend(True).placement(cm.LegendPlacement.BOTTOM)
    if table_mode:
        return legend.display_mode(cm.LegendDisplayMode.TABLE).calcs(["lastNotNull", "max"])
    return legend.display_mode(cm.LegendDisplayMode.LIST).calcs([])


def timeseries_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "none",
    width: int = 12,
    height: int = 8,
    legend_table: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(2)
        .fill_opacity(0)
        .show_points(cm.VisibilityMode.AUTO)
        .legend(_legend(legend_table))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def value_mappings(texts: Mapping[int, tuple[str, str]]) -> list[dm.ValueMap]:
    """A gauge's values shown as text in a colour: ``{value: (text, colour)}``, in value order."""
    return [
        dm.ValueMap(
            options={
                str(value): dm.ValueMappingResult(text=text, color=color, index=i)
                for i, (value, (text, color)) in enumerate(sorted(texts.items()))
            }
        )
    ]


def tier_mappings() -> list[dm.ValueMap]:
    """0 ok / 1 investigate / 2 pause / 3 kill, each in its colour."""
    return value_mappings({value: (tier.upper(), TIER_COLORS[tier]) for value, tier in TIER_VALUES.items()})


def stat_panel(
    title: str,
    description: str,
    target: prometheus.Dataquery,
    *,
    unit: str = "none",
    width: int = 6,
    height: int = 6,
    mappings: list[dm.ValueMap] | None = None,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
) -> stat.Panel:
    """A big-number panel: the last value of each series, coloured by ``mappings`` or threshold ``steps``."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target)
        .unit(unit)
        .span(width)
        .height(height)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .orientation(cm.VizOrientation.AUTO)
        .thresholds(
            db.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=value, color=color) for value, color in steps])
        )
    )
    if mappings is not None:
        panel = panel.mappings(mappings)
    return panel


def state_timeline_panel(
    title: str,
    description: str,
    target: prometheus.Dataquery,
    mappings: list[dm.ValueMap],
    *,
    width: int = 24,
    height: int = 7,
) -> statetimeline.Panel:
    """Discrete states over time (tier, latch, degraded), coloured by ``mappings``."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target)
        .mappings(mappings)
        .span(width)
        .height(height)
        .merge_values(True)
        .show_value(cm.VisibilityMode.AUTO)
        .row_height(0.9)
        .fill_opacity(80)
        .line_width(0)
        .legend(_legend(False))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE))
    )


def hide_columns(columns: Sequence[str], rename: Mapping[str, str] | None = None) -> dm.DataTransformerConfig:
    """Grafana's ``organize`` transformation: hide label columns a table does not need (the SDK has no typed
    options for transformations)."""
    return dm.DataTransformerConfig(
        id_val="organize",
        options={"excludeByName": {c: True for c in columns}, "renameByName": dict(rename or {})},
    )


def table_panel(
    title: str,
    description: str,
    target: prometheus.Dataquery,
    *,
    hidden: Sequence[str] = ("Time",),
    rename: Mapping[str, str] | None = None,
    sort_by: str | None = None,
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target)
        .span(width)
        .height(height)
        .show_header(True)
        .with_transformation(hide_columns(hidden, rename))
        .footer(cb.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False))
    )
    if sort_by is not None:
        panel = panel.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(False)])
    return panel
