"""The reporter as a langchain-core tool, for agents and graphs that call tools by name."""

from __future__ import annotations

from typing import Any

from langchain_core.tools import BaseTool, tool
from pydantic import BaseModel, Field

from casereview.data import load_case
from casereview.config import Settings
from casereview.schemas import ClassifierOpinion, Neighbour
from casereview.tools.reporter.backends import get_backend
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.gather import neighbour_images
from casereview.tools.reporter.reporting import generate_reports


class WriteReportArgs(BaseModel):
    case_ref: str = Field(description="the case: split:index (e.g. test:42) or an image file path")
    variant: str = Field(default="grounded", description="prompt variant (see casereview.prompts)")
    opinion: ClassifierOpinion | None = Field(default=None, description="the classifier's opinion, for grounded variants")
    neighbours: list[Neighbour] | None = Field(default=None, description="retrieved similar cases, for grounded variants")


def make_report_tool(settings: Settings) -> BaseTool:
    """A ``write_report`` tool bound to ``settings`` (data root, reporter backend)."""

    @tool("write_report", args_schema=WriteReportArgs)
    def write_report(
        case_ref: str,
        variant: str = "grounded",
        opinion: ClassifierOpinion | None = None,
        neighbours: list[Neighbour] | None = None,
    ) -> dict[str, Any]:
        """Write a radiology report for one paediatric chest X-ray with the configured reporter backend.

        Returns the raw text, the parsed impression (normal, pneumonia or indeterminate, or none
        when the output broke the contract) and the provenance of the output.
        """
        case = load_case(case_ref, settings.data.root)
        images = neighbour_images(neighbours, settings.data.root) if neighbours else None
        evidence = Evidence(case.case_id, case.image, opinion, tuple(neighbours) if neighbours else None, images)
        return generate_reports(get_backend(settings), [evidence], variant)[0].model_dump()

    return write_report
