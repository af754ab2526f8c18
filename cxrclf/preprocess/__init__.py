"""Image preprocessing of the paper: burned-in text removal (Eq. 4) and adaptive TV denoising (Eq. 5).

Pure transforms on arrays; reading and writing images happens elsewhere.
"""

from cxrclf.preprocess.artifacts import remove_text, text_mask
from cxrclf.preprocess.tv import denoise_tv

__all__ = ["denoise_tv", "remove_text", "text_mask"]
