"""Training on Ray Train: the base model (:mod:`.base`, data-parallel in :mod:`.ddp` and
:mod:`.raytrain`), the channel-context model (:mod:`.context`) and the meta-training of the
λ-modulators (:mod:`.meta`). The losses and steps themselves are :mod:`oml.train` and
:mod:`oml.meta`; weights and training state are read and written by :mod:`oml.models.weights`."""
