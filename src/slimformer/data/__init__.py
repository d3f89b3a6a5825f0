"""Tasks and datasets: local TSV/CSV/JSONL/text files, HF `datasets`, calibration batches."""
from .tasks import TASK_KINDS, Task, load_task
from .calibration import calibration_batches, calibration_texts, sample_sentences

__all__ = ["TASK_KINDS", "Task", "load_task", "calibration_texts", "calibration_batches",
           "sample_sentences"]
