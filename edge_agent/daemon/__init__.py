"""The daemon (``edge-agent run``): the agent that starts the stages in order and stops them in
reverse, and what only a long-running service needs: systemd notification and watchdog
(``sdnotify``, ``supervise``), reload on SIGHUP or command (``reload``), the state-directory
lock (``statelock``), the start-up checks that ``config validate`` shares (``preflight``),
``/metrics`` and ``/healthz`` (``exporter``) and journal-friendly logging (``logsetup``)."""
