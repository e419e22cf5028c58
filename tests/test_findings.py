"""The findings registry: one unit per kind, complete, and an analysis that leaves the model's graph alone."""

from __future__ import annotations

import copy
from typing import Any, Callable

import networkx as nx

import gradviz
from gradviz.core.analysis import analyze_stats
from gradviz.core.findings import REGISTRY, Check, Evidence, explanation, find_all, register, sort_findings
from gradviz.core.report import SEVERITIES, Finding


def test_every_kind_is_one_unit_with_its_explanation() -> None:
    for kind, check in REGISTRY.items():
        assert isinstance(check, Check) and check.kind == kind
        assert check.meaning.strip() and check.advice.strip(), kind
        assert kind == kind.lower() and " " not in kind


def test_kinds_cannot_be_registered_twice() -> None:
    class Again(Check):
        kind = "dead-head"

    try:
        register(Again)
    except ValueError as e:
        assert "dead-head" in str(e)
    else:
        raise AssertionError("a second 'dead-head' was registered")


def test_unknown_kind_gets_a_generic_explanation() -> None:
    assert explanation("no-such-kind") == ("See the message for details.", "")
    assert explanation("conflict") == (REGISTRY["conflict"].meaning, REGISTRY["conflict"].advice)


def test_sort_is_worst_first_then_kind_then_message() -> None:
    findings = [Finding("b", "info", "2"), Finding("a", "warning", "1"), Finding("a", "error", "9"),
                Finding("a", "info", "1")]
    ordered = sort_findings(findings)
    ranks = [SEVERITIES.index(f.severity) for f in ordered]
    assert ranks == sorted(ranks, reverse=True)
    assert [(f.kind, f.message) for f in ordered if f.severity == "info"] == [("a", "1"), ("b", "2")]


def test_analysis_reports_each_kind_from_its_check_and_leaves_the_topology_alone(
        sample_path: Callable[[str], Any]) -> None:
    """Every finding of a report is what its registered check says; the analysis writes nothing on the
    model's graph (the blocked path's marks go on the report's own copy)."""
    session = gradviz.prepare(sample_path("stop_gradient_head"))
    report = session.run(batch_size=8)
    before = nx.node_link_data(session.topology.graph, edges="links")
    again = analyze_stats(session.topology, report.stats, report.spec, model_name=report.model_name)
    assert nx.node_link_data(session.topology.graph, edges="links") == before
    assert again.findings == report.findings
    assert any(f.kind == "blocked-path" for f in report.findings)
    blocker = next(b for f in report.findings for b in f.blockers)
    assert report.graph.nodes[blocker]["blocks_for"] and "blocks_for" not in session.topology.graph.nodes[blocker]
    evidence = Evidence(session.topology, report.stats, report.spec, report.layers, report.trunk,
                        copy.deepcopy(report.graph))
    by_kind: dict[str, list[Finding]] = {}
    for finding in find_all(evidence):
        by_kind.setdefault(finding.kind, []).append(finding)
    for kind, findings in by_kind.items():
        assert sort_findings(REGISTRY[kind].find(evidence)) == sort_findings(findings)
    assert sort_findings(find_all(evidence)) == report.findings
