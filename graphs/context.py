"""The run context: what a review run is configured with (never saved in checkpoints).

Nodes read settings from ``runtime.context.settings`` and call capabilities through
``runtime.context.tool(name)``; each tool is built on first use and shared by every case
of the run, so models load once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.tools import BaseTool

from casereview.config import Settings


def _factories():
    from casereview.tools.case_search_tool import make_case_search_tool
    from casereview.tools.classifier_tool import make_classifier_tool
    from casereview.tools.reporter.tool import make_report_tool

    return {
        "classify_case": make_classifier_tool,
        "search_similar_cases": make_case_search_tool,
        "write_report": make_report_tool,
    }


@dataclass
class ReviewContext:
    settings: Settings
    run_id: str = "adhoc"
    tools: dict[str, BaseTool] = field(default_factory=dict)

    def tool(self, name: str) -> BaseTool:
        """The langchain-core tool ``name``: classify_case, search_similar_cases or write_report."""
        if name not in self.tools:
            self.tools[name] = _factories()[name](self.settings)
        return self.tools[name]
