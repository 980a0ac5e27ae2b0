"""The evaluations of the product: the classifier's evaluation (``casereview evaluate``, its figures and
saliency), the batch runner, records, metrics, statistics and report (``casereview batch``), case picking
(``report-gen --pick``) and the retrieval evaluation. They use the capabilities, they are not
capabilities. The research layer (studies/: task reports, studies) builds on them;
matplotlib is imported only by the modules that draw (``*_figures``), when a figure is drawn."""
