"""Built-in tasks, imported explicitly so that registration order is fixed."""
from tasks import (
    captioning,  # noqa: F401
    imdb,  # noqa: F401
    librispeech,  # noqa: F401
    ptb,  # noqa: F401
    translation,  # noqa: F401
    video,  # noqa: F401
)
