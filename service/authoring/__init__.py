"""Tools for knowledge authors: the clinical logic rendered for review, synthetic patients."""
