"""Celery app and tasks that run the engines for the abtest service."""
