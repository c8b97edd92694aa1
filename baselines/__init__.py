"""The recurrent backbones; importing the package registers rnn, lstm, gru, brnn and resrnn."""
from baselines import recurrent, resrnn  # noqa: F401  (explicit imports register the models)
from baselines.recurrent import detach_state

__all__ = ["detach_state"]
