"""The ``oml`` command: compress, decompress and inspect images on local disk.

oml compress photo.png -o photo.oml --quality 3 --steps 20
oml compress photos/ -o archive/            # every image in the folder
oml decompress archive/*.oml -o restored/
oml decompress scan.oml -o window.png --region 4096,2048,512,512   # decodes only the tiles it overlaps
oml info photo.oml
oml archive --input photos/ --output archive/ --steps 5       # a collection on Ray (local or a cluster)
oml restore --input archive/ --output restored/
"""

import warnings

# CompressAI's import triggers a torch deprecation warning that means nothing to a user.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from pipeline.cli.command import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]
