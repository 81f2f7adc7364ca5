"""The model families the harness studies, behind one seam (``geoloc.tasks.seam``).

``geoclip`` (``geoloc/tasks/geoclip/``) is registered here; a new family is a folder beside it
with a ``Task`` subclass decorated with ``register`` and imported below.
"""

from geoloc.tasks.geoclip import GeoCLIPTask
from geoloc.tasks.seam import DEFAULT_TASK, Task, TaskConfig, TaskTrainer, register, task_named, task_of, tasks

__all__ = [
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
