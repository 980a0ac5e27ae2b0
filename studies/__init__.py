"""The research layer: the task-report writers, the architecture and seed study, the robustness and
saliency checks, the gate's shift study and their figures, and the commands that run them (``report``,
``study``, ``robustness``; :mod:`casereview.studies.commands`, found by the CLI through the
``casereview.commands`` entry point). Nothing else in the project imports this package."""
