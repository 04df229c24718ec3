"""The online detection service: Ray Serve deployments shaped like the pipeline, an HTTP/WebSocket API and a page.

``raydf serve`` runs it on the local Ray; ``infra/serve.yaml`` deploys it on the cluster.
Nothing heavy is imported here: :mod:`raydf.serve.app` (Ray Serve, FastAPI) loads only
where the service runs.
"""
