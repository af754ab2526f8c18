"""Lung segmentation: a U-Net on a timm encoder, trained on the NLM masks, and what uses it.

- :mod:`cxrclf.segment.data`: (X-ray, lung mask) pairs of the Montgomery, Shenzhen and CSV layouts;
- :mod:`cxrclf.segment.model`: the network; :mod:`cxrclf.segment.plane`: its input plane (torch-free);
- :mod:`cxrclf.segment.ort`: the built-in network's ONNX graph in onnxruntime, which the input checks run;
- :mod:`cxrclf.segment.run`: the run folder (``SegmentConfig``, ``SegmentRun``), and the segmenter preprocessing parameters name;
- :mod:`cxrclf.segment.train`: ``cxrclf segment train``;
- :mod:`cxrclf.segment.infer`: :class:`~cxrclf.segment.infer.Segmenter` and ``cxrclf segment IMAGE...``;
- :mod:`cxrclf.segment.masks`: masks from probabilities, Dice, IoU, overlays.

How much of a classifier's attribution falls inside the lungs is explain's (:mod:`cxrclf.explain.in_lung`).

Nothing is imported here: ``cxrclf --help`` must not load torch.
"""
