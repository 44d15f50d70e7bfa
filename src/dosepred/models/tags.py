"""The format tags of dosepred's checkpoint files (their ``"format"`` entry):
:mod:`dosepred.models.checkpoint` reads and writes them and :mod:`dosepred.models.transfer` builds model
checkpoints too, so the tags live below both. Not the table of data formats (:mod:`dosepred.io.formats`)."""

CHECKPOINT_FORMAT = "dosepred-checkpoint"  # a training run's checkpoint (weights, optimiser, ...)
MODEL_FORMAT = "dosepred-model"  # a released model (weights and the record needed to predict)
ENSEMBLE_FORMAT = "dosepred-ensemble"  # an ensemble folder's ensemble.json (dosepred.models.ensemble)
ENSEMBLE_FILE = "ensemble.json"  # the file that makes a folder an ensemble
#: the layout of a checkpoint or model file this dosepred writes and reads (its ``"version"`` entry; a file
#: without one predates the entry and is version 1). A file of a later version was written by a newer
#: dosepred whose records this one may misread: it is refused, not guessed at.
CHECKPOINT_VERSION = 1
