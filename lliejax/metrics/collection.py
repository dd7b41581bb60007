"""clu metric collections for the training loop's scalars."""
# No ``from __future__ import annotations``: clu reads the Collection field annotations as objects.
from clu import metrics as clu_metrics


def train_collection(names) -> type[clu_metrics.Collection]:
  """A clu ``Collection`` class of the training scalars ``names``: means, except ``learning_rate`` (last value).

  ``clu.metrics.Std`` is not used: it is broken with jax 0.10. ``compute()`` of an empty average gives NaN.
  """
  fields = {n: (clu_metrics.LastValue if n == "learning_rate" else clu_metrics.Average).from_output(n)
            for n in names}
  return clu_metrics.Collection.create(**fields)


__all__ = ["train_collection"]
