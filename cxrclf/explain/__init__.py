"""Explanations of a run's predictions: LIME superpixels and Grad-CAM heatmaps."""
