"""The model families the harness studies, behind one seam (``geoloc.tasks.seam``).

``geoclip`` (``geoloc/tasks/geoclip/``) and ``cross_view`` (``geoloc/tasks/cross_view/``) are registered
here; a new family is a folder beside them with a ``Task`` subclass decorated with ``register`` and imported below.
"""

from geoloc.tasks.cross_view import CrossViewTask
from geoloc.tasks.geoclip import GeoCLIPTask
from geoloc.tasks.seam import DEFAULT_TASK, Task, TaskConfig, TaskTrainer, register, task_named, task_of, tasks

__all__ = [
    "CrossViewTask",
    "DEFAULT_TASK",
    "GeoCLIPTask",
    "Task",
    "TaskConfig",
    "TaskTrainer",
    "register",
    "task_named",
    "task_of",
    "tasks",
]
