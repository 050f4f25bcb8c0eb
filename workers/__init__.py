"""The engine side of the abtest service, imported only by :mod:`abtest.wiring`.

    host             EngineHost: the engines of one process behind their batching schedulers
    runner           the one code path from a dispatched request to an engine result
    inprocess        InProcessDispatcher (embedded mode; imports neither celery nor redis)
    celery_app       the Celery app: Redis broker and result backend, one queue per engine
    celery_dispatch  CeleryDispatcher and its result listener (the API side of Celery mode)
    tasks, main      the Celery task and ``abtest worker``
"""
