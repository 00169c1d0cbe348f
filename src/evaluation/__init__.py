"""What src/eval.py writes beside metrics.json: the per-image table, the worst images, the
reliability diagram and the HTML report."""
