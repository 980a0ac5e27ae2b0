"""The three capabilities as langchain-core tools, for agents and graphs that call tools by name.

Each tool is built over a run context's resources (one classifier, one case index, one
reporter backend per process) and takes a case reference (``test:42``, an image path) or a
28x28 image given directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from langchain_core.tools import BaseTool, tool
from pydantic import BaseModel, Field

from casereview.config import Settings
from casereview.data import Case, case_from_input, load_split
from casereview.schemas import ClassifierOpinion, ClassifierResult, Neighbour
from casereview.tools.context import RunContext
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.prompts import render_prompt
from casereview.tools.reporter.reporting import generate

if TYPE_CHECKING:
    from casereview.tools.case_classifier import CaseClassifier
    from casereview.tools.case_index import CaseIndex
    from casereview.tools.reporter.backends import ReporterBackend

class CaseInput(BaseModel):
    case_ref: str | None = Field(default=None, description="the case: split:index (e.g. test:42) or an image file path")
    image: list[list[int]] | None = Field(default=None, description="or the 28x28 grayscale image (0-255) itself")


class SearchSimilarCasesArgs(CaseInput):
    k: int = Field(default=5, ge=1, description="number of similar cases")
    case_base: Literal["train", "train+val"] = Field(
        default="train", description="cases with known diagnoses to search; never the test split"
    )


class WriteReportArgs(CaseInput):
    variant: str = Field(default="grounded", description="prompt variant (see casereview.prompts)")
    opinion: ClassifierResult | ClassifierOpinion | None = Field(default=None, description="the classifier's opinion (classify_case output), for grounded variants")
    neighbours: list[Neighbour] | None = Field(default=None, description="retrieved similar cases, for grounded variants")


def _case(settings: Settings, case_ref: str | None, image: list[list[int]] | None) -> Case:
    return case_from_input(case_ref, image, settings.data.root, settings.data.download)


def neighbour_images(neighbours: list[Neighbour], settings: Settings) -> tuple:
    """The images of retrieved cases, from the dataset split each one names."""
    return tuple(load_split(n.split, settings.data.root, settings.data.download).images[n.index] for n in neighbours)


def make_classifier_tool(settings: Settings, classifier: CaseClassifier) -> BaseTool:
    @tool("classify_case", args_schema=CaseInput)
    def classify_case(case_ref: str | None = None, image: list[list[int]] | None = None) -> dict[str, Any]:
        """Classify one paediatric chest X-ray: calibrated p(pneumonia), the label at the validation
        threshold, and whether the case is uncertain (split-conformal prediction set on validation)."""
        return classifier.analyse_one(_case(settings, case_ref, image).image)[0].model_dump()

    return classify_case


def make_case_search_tool(settings: Settings, index: CaseIndex) -> BaseTool:
    @tool("search_similar_cases", args_schema=SearchSimilarCasesArgs)
    def search_similar_cases(case_ref: str | None = None, image: list[list[int]] | None = None, k: int = 5,
                             case_base: str = "train") -> list[dict[str, Any]]:
        """Find the k past chest X-rays most similar to a case, with their known diagnoses.

        Returns case_id, split, index, label (normal or pneumonia) and cosine similarity for each,
        most similar first. A dataset case never retrieves itself.
        """
        case = _case(settings, case_ref, image)
        exclude = case.case_id if case.split else None
        return [h.model_dump() for h in index.search_image(case.image, k, case_base, exclude_case_id=exclude)]

    return search_similar_cases


def make_report_tool(settings: Settings, backend: ReporterBackend) -> BaseTool:
    @tool("write_report", args_schema=WriteReportArgs)
    def write_report(case_ref: str | None = None, image: list[list[int]] | None = None, variant: str = "grounded",
                     opinion: ClassifierOpinion | None = None, neighbours: list[Neighbour] | None = None) -> dict[str, Any]:
        """Write a radiology report for one paediatric chest X-ray with the configured reporter backend.

        Returns the raw text, the parsed impression (normal, pneumonia or indeterminate, or none
        when the output broke the contract) and the provenance of the output.
        """
        case = _case(settings, case_ref, image)
        images = neighbour_images(neighbours, settings) if neighbours else None
        evidence = Evidence(case.case_id, case.image, opinion, tuple(neighbours) if neighbours else None, images)
        return generate(backend, [render_prompt(variant, evidence)])[0].model_dump()

    return write_report


def make_tools(ctx: RunContext) -> dict[str, BaseTool]:
    """classify_case, search_similar_cases and write_report over the run's own resources, by name."""
    tools = (make_classifier_tool(ctx.settings, ctx.classifier), make_case_search_tool(ctx.settings, ctx.index),
             make_report_tool(ctx.settings, ctx.backend))
    return {t.name: t for t in tools}
