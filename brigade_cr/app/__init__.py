"""
The wiring: twistd options, makeService, the services that start and stop the parts, metrics.
"""
