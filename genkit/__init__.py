"""genkit: generative modeling with one Trainer, one Sampler API and checked math.

Nothing heavy is imported here: import the submodule you need, e.g.
``from genkit.train import Trainer``.
"""

__version__ = "0.1.0"
