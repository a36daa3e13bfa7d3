"""Built-in task plugins (installed as ``lceval.tasks``)."""
