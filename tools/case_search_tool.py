"""The case index as a langchain-core tool, for agents and graphs that call tools by name."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.tools import BaseTool, tool
from pydantic import BaseModel, Field

from casereview.data import load_case
from casereview.config import Settings
from casereview.tools.case_index import CaseIndex, open_index


class SearchSimilarCasesArgs(BaseModel):
    case_ref: str = Field(description="the case: split:index (e.g. test:42) or an image file path")
    k: int = Field(default=5, ge=1, description="number of similar cases")
    case_base: Literal["train", "train+val"] = Field(
        default="train", description="cases with known diagnoses to search; never the test split"
    )


def make_case_search_tool(settings: Settings, index: CaseIndex | None = None) -> BaseTool:
    """A ``search_similar_cases`` tool over ``index`` (default: :func:`open_index` of ``settings``)."""
    index = index or open_index(settings)

    @tool("search_similar_cases", args_schema=SearchSimilarCasesArgs)
    def search_similar_cases(case_ref: str, k: int = 5, case_base: str = "train") -> list[dict[str, Any]]:
        """Find the k past chest X-rays most similar to a case, with their known diagnoses.

        Returns case_id, split, index, label (normal or pneumonia) and cosine similarity for each,
        most similar first. A dataset case never retrieves itself.
        """
        case = load_case(case_ref, settings.data.root)
        hits = index.search_image(case.image, k, case_base, exclude_case_id=case.case_id)
        return [h.model_dump() for h in hits]

    return search_similar_cases
