"""Image preprocessing of the paper: burned-in text removal (Eq. 4), adaptive TV denoising (Eq. 5), resizing.

Pure transforms on arrays, handed a lung segmenter when the parameters crop or mask to the lungs,
never loading one; reading and writing images is the preprocessing stage's, :mod:`cxrclf.prepare`.
:func:`preprocess_image` is the single function that training data, ``predict``, ``explain``
and ``evaluate`` on external data all go through.
"""

from cxrclf.preprocess.artifacts import remove_text, text_mask
from cxrclf.preprocess.params import PreprocessParams, read_params
from cxrclf.preprocess.pipeline import preprocess_image, preprocess_stages
from cxrclf.preprocess.tv import denoise_tv

__all__ = ["PreprocessParams", "denoise_tv", "preprocess_image", "preprocess_stages", "read_params", "remove_text", "text_mask"]
