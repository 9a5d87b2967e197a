"""The outbox: every event's one path from the rules to durable storage.

``delivery.py`` (:class:`EventDelivery`: snapshot, log, sinks, in that order), ``eventlog.py``
(the SQLite :class:`Outbox` that numbers events with ``seq`` and keeps them until delivered; the
in-memory log of ``track``), ``seqmark.py`` (the seq high-water mark that survives a lost
outbox), ``openevents.py`` (events a crash left open, ended at the next start).
"""
