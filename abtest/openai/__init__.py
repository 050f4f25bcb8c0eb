"""OpenAI-compatible endpoints without HTTP: the wire format (:mod:`.protocol`), chat templates
(:mod:`.templates`), the error shape (:mod:`.errors`) and the serving logic (:mod:`.serving`).
The Flask routes are :mod:`abtest.api.openai`; docs/openai.md describes the endpoints."""
