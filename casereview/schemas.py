"""Records passed between the capabilities (classifier -> index -> reporter -> graph) and saved as JSON."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Label = Literal["normal", "pneumonia"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifierOpinion(Record):
    """The CNN's calibrated view of one image."""

    prob_pneumonia: float = Field(ge=0.0, le=1.0, description="temperature-scaled p(pneumonia)")
    label: Label = Field(description="label at the shipped decision threshold")
    threshold: float = Field(description="decision threshold on prob_pneumonia, fitted on validation")
    temperature: float
    uncertain: bool = False  # inside the validation-calibrated uncertainty band (set by the graph)
    checkpoint_sha256: str


class Neighbour(Record):
    """One similar case from the case base, with its known diagnosis."""

    case_id: str
    split: str
    index: int
    label: Label
    similarity: float = Field(description="cosine similarity, 1 - Chroma's cosine distance")
