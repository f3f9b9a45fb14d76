"""
Where builds and projects live: Kubernetes, the directory backend, the durable spool, the project set,
retries and the client-side throttle. Stores never import the web layer.
"""
