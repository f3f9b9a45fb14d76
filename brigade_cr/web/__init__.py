"""
The HTTP edge: the Klein routes, the site's request limits and its access log, the client address.
"""
