"""The durable workflow engine (generic) and the signup workflow built on it.

- ``workflow``, ``retry``, ``status``: what a workflow is, described as data;
- ``run_actor`` (with ``run_deadlines`` and ``run_commands``), ``supervisor``,
  ``timers``, ``recovery``, ``index``: how runs execute, wait, survive
  restarts and are found again;
- ``runtime``: the engine as the HTTP layer uses it;
- ``signup``: the user-signup workflow and its integrations.
"""
