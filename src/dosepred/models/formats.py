"""The format tags of dosepred's checkpoint files (:mod:`dosepred.models.checkpoint` reads and writes
them; :mod:`dosepred.models.transfer` builds model checkpoints too, so the tags live below both)."""

CHECKPOINT_FORMAT = "dosepred-checkpoint"  # a training run's checkpoint (weights, optimiser, ...)
MODEL_FORMAT = "dosepred-model"  # a released model (weights and the record needed to predict)
