"""A browser tool for clinicians to rank candidate conversations into ``data/labels/<annotator>.jsonl``."""

from vital.annotate.server import make_server
from vital.annotate.session import AnnotationError, AnnotationSession, Task, load_tasks

__all__ = ["AnnotationError", "AnnotationSession", "Task", "load_tasks", "make_server"]
