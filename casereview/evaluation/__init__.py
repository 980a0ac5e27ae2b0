"""Evaluations, figures and task-report writers: they use the capabilities, they are not capabilities."""
