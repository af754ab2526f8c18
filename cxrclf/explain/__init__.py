"""Explanations of a run's predictions: LIME superpixels and Grad-CAM heatmaps, and how much of them falls
inside the lung fields (:mod:`cxrclf.explain.in_lung`)."""
