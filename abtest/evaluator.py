"""The assignment evaluator, for the server's modules: it lives in the SDK
(:mod:`abtest.client.evaluation`, standard library only) so that the server and locally
evaluating clients run one implementation."""

from .client.evaluation import *  # noqa: F401,F403
from .client.evaluation import __all__  # noqa: F401
