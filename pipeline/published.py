"""Published Kodak rate-distortion points, for plots and BD-rates.

CompressAI's own results for its pretrained models (real bitstreams, PSNR on
RGB, mean over the 24 Kodak images), from CompressAI's repository:
``results/image/kodak/compressai-<model>_mse_cuda.json``.
"""

from __future__ import annotations

PUBLISHED_KODAK: dict[str, dict[str, list[float]]] = {
    "bmshj2018-hyperprior": {
        "bpp": [0.1313, 0.2089, 0.3199, 0.4784, 0.6687, 0.9388, 1.2592, 1.6602],
        "psnr": [27.582, 29.197, 30.972, 32.838, 34.526, 36.743, 38.584, 40.557],
        "ms_ssim": [0.91737, 0.94206, 0.96106, 0.97487, 0.98356, 0.98925, 0.99287, 0.99549],
    },
    "mbt2018-mean": {
        "bpp": [0.1239, 0.1980, 0.3072, 0.4606, 0.6617, 0.9144, 1.2342, 1.6191],
        "psnr": [27.699, 29.359, 31.129, 32.951, 34.968, 36.911, 38.838, 40.633],
        "ms_ssim": [0.91784, 0.94306, 0.96148, 0.97520, 0.98358, 0.98925, 0.99305, 0.99535],
    },
}
