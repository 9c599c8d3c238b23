"""mfdr: the MFDR model (placeholder; see mfdr/model.py)."""
