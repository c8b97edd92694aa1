"""Built-in tasks, imported explicitly so that registration order is fixed."""
from tasks import ptb  # noqa: F401
