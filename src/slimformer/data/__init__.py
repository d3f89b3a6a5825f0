"""Tasks and datasets: local TSV/CSV/JSONL/text files, HF `datasets`, calibration batches."""
from .tasks import TASK_KINDS, Task, load_task
from .samples import sample_sentences
from .unlabeled import training_texts
from .calibration import calibration_batches, calibration_texts, model_batches, decoder_inputs

__all__ = ["TASK_KINDS", "Task", "load_task", "calibration_texts", "calibration_batches",
           "sample_sentences", "model_batches", "decoder_inputs", "training_texts"]
