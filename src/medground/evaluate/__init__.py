"""One evaluation harness: ``runner`` scores methods on datasets, ``store`` keeps runs on disk, ``report`` makes
tables, contact sheets and comparisons."""
