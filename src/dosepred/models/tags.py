"""The format tags of dosepred's checkpoint files (their ``"format"`` entry):
:mod:`dosepred.models.checkpoint` reads and writes them and :mod:`dosepred.models.transfer` builds model
checkpoints too, so the tags live below both. Not the table of data formats (:mod:`dosepred.io.formats`)."""

CHECKPOINT_FORMAT = "dosepred-checkpoint"  # a training run's checkpoint (weights, optimiser, ...)
MODEL_FORMAT = "dosepred-model"  # a released model (weights and the record needed to predict)
