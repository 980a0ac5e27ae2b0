"""Studies and report writers: the task reports, the classifier's evaluation, saliency, robustness and
failure analyses, the gate's shift study, the batch report and their figures. They use the product and
the evaluations (``casereview.evaluation``); nothing below imports them."""
