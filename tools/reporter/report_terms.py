"""The phrases tier 2 reads a report by (``report_language``): target concepts and assertion triggers.

Data only, lower case (spaCy matches them on ``LOWER``, tokenised like the report). Where they come from:

- Pneumonia and its signs follow the mention lists of the CheXpert labeller (Irvin et al. 2019,
  ``phrases/mention/pneumonia.txt``, ``consolidation.txt``: pneumonia, infection, infectious process,
  consolidation, infiltrate, airspace disease/opacity) and the radiology lexicon of the Fleischner
  Society glossary (air bronchogram, airspace, bronchopneumonia). Bare "opacity" is a finding, not
  pneumonia (CheXpert files it under Lung Opacity): it only counts when it is denied.
- A normal study: the "No Finding" phrasing of CheXpert (``phrases/mention/no_finding``: "no acute
  cardiopulmonary process/abnormality/disease", "lungs are clear") and the stock normal impressions of
  American College of Radiology report templates ("Negative chest radiograph", "Normal chest").
- Triggers: negation after NegEx (Chapman et al. 2001; negspacy's ``en_clinical`` termset) and the
  negation and uncertainty rules of NegBio (Peng et al. 2018, ``patterns/neg_patterns.txt``,
  ``uncertainty_patterns.txt``) as the CheXpert labeller uses them: "cannot be excluded", "versus",
  "or", "concerning for" are uncertain; "resolved", "clear of" deny; "rule out", "evaluate for" ask.
  Historical and hypothetical after ConText (Harkema et al. 2009).

Each list is phrased from those sources' rules, not copied from any report text.
"""

from __future__ import annotations

# The diagnosis named (what the CheXpert labeller's Pneumonia label reads) ...
PNEUMONIA = [
    "pneumonia", "pneumonias", "bronchopneumonia", "pleuropneumonia", "pneumonic", "pna", "infection",
    "infectious process", "infectious infiltrate", "infectious consolidation", "lower respiratory tract infection",
]
# ... and its radiographic signs (CheXpert's Consolidation and the airspace terms).
PNEUMONIA_SIGNS = [
    "consolidation", "consolidations", "consolidative", "consolidated", "consolidating",
    "infiltrate", "infiltrates", "infiltration", "infiltrative",
    "airspace disease", "air space disease", "air-space disease",
    "airspace opacity", "airspace opacities", "airspace opacification", "air space opacity",
    "air space opacities", "air-space opacity", "air-space opacities", "alveolar opacity", "alveolar opacities",
    "airspace process", "air bronchogram", "air bronchograms", "lobar opacity", "lobar opacities",
]
# Denied, these say the study is normal; asserted, they name no pneumonia.
FINDINGS_DENIED_MEAN_NORMAL = [
    "acute cardiopulmonary process", "acute cardiopulmonary abnormality", "acute cardiopulmonary abnormalities",
    "acute cardiopulmonary disease", "acute cardiopulmonary findings", "acute cardiopulmonary finding",
    "acute cardiopulmonary pathology", "acute intrathoracic process", "acute intrathoracic abnormality",
    "acute chest abnormality", "acute pulmonary process", "acute pulmonary disease", "acute lung disease",
    "acute process", "acute disease", "acute abnormality", "acute findings", "acute pathology",
    "active disease", "active cardiopulmonary disease", "active pulmonary disease",
    "cardiopulmonary abnormality", "cardiopulmonary disease", "radiographic abnormality",
    "focal opacity", "focal opacities", "focal opacification", "opacity", "opacities", "opacification",
    "focal lung opacity", "lung opacity", "abnormality", "abnormalities", "significant abnormality",
    "focal airspace process", "focal finding", "focal findings", "acute", "acute change", "acute changes",
]
_LUNGS = ["lungs", "lung fields", "both lungs", "the lungs", "lung"]
_BE = ["are", "remain", "appear", "is", "are now", "appear to be", "are otherwise", "are grossly",
       "are well expanded and", "are well-expanded and", "are well aerated and", "remain grossly", ""]
_CLEAR = ["clear", "clear bilaterally", "clean", "unremarkable", "normal"]
_STUDY = ["chest", "chest x-ray", "chest xray", "chest radiograph", "chest radiographs", "chest film",
          "radiograph", "study", "exam", "examination", "chest study", "chest examination", "cxr", "film", "x-ray"]
NORMAL_STUDY = sorted({
    *(f"{lungs} {be} {clear}".replace("  ", " ") for lungs in _LUNGS for be in _BE for clear in _CLEAR),
    *(f"{adj} {study}" for adj in ("normal", "negative", "unremarkable", "clear") for study in _STUDY),
    *(f"{study} is {adj}" for adj in ("normal", "negative", "unremarkable", "clear") for study in _STUDY),
    "clear lungs", "clear lung fields", "lungs are clear of consolidation",
    "no radiographic evidence of disease", "normal chest", "normal lungs", "normal lung fields", "nothing acute",
})
# A sentence that is only one of these words is a normal impression ("Impression: Normal.").
NORMAL_ALONE = ("normal", "negative", "unremarkable", "clear", "nad", "wnl")

NEGATION = {
    "pseudo_negations": [
        "no change", "no significant change", "no interval change", "no significant interval change",
        "no definite change", "not only", "no increase", "not excluded", "not be excluded", "not been excluded",
        "not entirely excluded", "cannot exclude", "can not exclude", "can't exclude", "cannot be excluded",
        "cannot rule out", "cannot be ruled out", "could not be excluded", "not ruled out", "not be ruled out", "not rule out", "not been ruled out",
        "without change", "no longer seen as", "not significantly changed", "not changed",
        "no new", "no new area of", "no evidence to rule out",
    ],
    "preceding_negations": [
        "no", "not", "without", "negative for", "no evidence of", "no radiographic evidence of",
        "no findings of", "no findings to suggest", "no signs of", "no sign of", "free of", "absence of",
        "no convincing", "no definite", "no focal", "resolution of", "resolved", "clearing of", "cleared",
        "clear of", "no longer", "nor", "neither", "rather than", "instead of", "never",
    ],
    "following_negations": [
        "is absent", "are absent", "not seen", "not identified", "not present", "not demonstrated",
        "not visualized", "not evident", "not appreciated", "has resolved", "have resolved", "resolved",
        "has cleared", "have cleared", "cleared", "is unlikely", "are unlikely", "unlikely", "ruled out",
        "is gone", "no longer present", "no longer seen", "not detected", "excluded", "less likely",
        "is less likely", "not likely", "is not likely",
    ],
    "termination": [".", ";", "but", "however", "although", "though", "except", "aside from", "apart from",
                    "other than", "with the exception of", "which", "yet", "still", "whereas", "while"],
}
# The CheXpert labeller's uncertainty rules (``patterns/post_negation_uncertainty.txt``) as trigger phrases:
# "likely", "suggestive of" and "compatible with" are not among them (they assert), "probable" and
# "concerning for" are.
UNCERTAINTY = {
    "pseudo_negations": ["no doubt", "without doubt", "less likely", "not likely"],
    "preceding_negations": [
        "possible", "possibly", "probable", "probably", "presumably", "presumed", "may", "might", "could", "would",
        "maybe", "may represent", "may reflect", "may be", "may be due to", "could be", "questionable",
        "question of", "suggestion of", "suspicious for", "suspected", "suspect", "suspicion of", "suspicion for",
        "concerning for", "concern for", "worrisome for", "cannot exclude", "can not exclude", "can't exclude",
        "cannot rule out", "cannot be excluded", "differential", "differential includes",
        "differential diagnosis includes", "versus", "vs", "vs.", "or", "and/or", "favor", "favored",
        "consider", "considered", "equivocal", "?", "uncertain", "indeterminate", "correlate clinically for",
        "poorly evaluated", "not well visualized", "obscured", "obscuring", "no new", "no new area of",
        "no evidence to rule out",
    ],
    "following_negations": [
        "cannot be excluded", "can not be excluded", "cannot be ruled out", "can not be ruled out",
        "not excluded", "not be excluded", "not entirely excluded", "not ruled out", "is not excluded",
        "is possible", "are possible", "is suspected", "are suspected", "is questioned", "not definitely excluded",
        "versus", "vs", "vs.", "or", "and/or", "?", "is considered", "should be considered", "is a consideration",
        "are not excluded", "difficult to exclude", "cannot be entirely excluded", "is not entirely excluded",
        "would be difficult to exclude", "in the differential", "is in the differential", "is favored",
        "could be present", "may be present", "is obscured", "poorly evaluated", "not well evaluated",
    ],
    "termination": NEGATION["termination"],
}
HISTORICAL = {
    "pseudo_negations": [
        "prior study", "prior studies", "prior exam", "prior examination", "prior radiograph", "prior radiographs",
        "prior film", "prior films", "prior chest", "prior x-ray", "previous study", "previous exam",
        "previous examination", "previous radiograph", "previous film", "previous chest", "previous exams",
        "prior exams", "prior imaging", "previous imaging", "prior comparison",
    ],
    "preceding_negations": [
        "history of", "h/o", "hx of", "past history of", "known history of", "prior episode of",
        "previous episode of", "treated", "previously treated", "old", "remote", "recent history of",
        "prior pneumonia", "previous pneumonia", "prior infection", "status post",
    ],
    "following_negations": ["in the past", "years ago", "previously treated"],
    "termination": [*NEGATION["termination"], "now", "new", "currently", "there is", "there are"],
}
HYPOTHETICAL = {
    "pseudo_negations": [],
    "preceding_negations": [
        "rule out", "ruled out for", "r/o", "evaluate for", "evaluation for", "evaluation of", "assess for",
        "to assess", "to exclude", "to evaluate", "if", "in case of", "should", "follow-up to", "follow up to",
        "to ensure", "to document", "to confirm", "recommend", "recommended", "clinical correlation for",
        "correlate for", "at risk for", "risk of", "screen for", "concern of", "reason for exam",
        "indication", "history:", "clinical history",
    ],
    "following_negations": ["to be excluded", "should be excluded", "should be considered", "to be ruled out"],
    "termination": NEGATION["termination"],
}
