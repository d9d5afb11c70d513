"""Run configuration: ``default_config.yaml``, a person's ``--config`` file and tasks files.

:mod:`.schema` reads, merges and validates (every problem at once, one line each);
:mod:`.tasks` reads a tasks file of several trainings; :mod:`.runs` turns a validated config
into a file training or a queued project training. The CLI's ``advanced-train``,
``multi-task-train`` and ``train-all`` are thin wrappers around these.
"""

from services.config.schema import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    Layer,
    load_config,
)
from services.config.tasks import Task, load_tasks

__all__ = ["DEFAULT_CONFIG_PATH", "Config", "ConfigError", "Layer", "Task", "load_config",
           "load_tasks"]
