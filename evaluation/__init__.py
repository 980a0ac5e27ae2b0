"""Batch evaluation (runner, records, metrics, statistics) and the retrieval evaluation: they use the
capabilities, they are not capabilities. Report writers and studies are in ``casereview.studies``."""
