"""
The domain: values, errors, interfaces, the Brigade v1 contract, identity, payload decoding,
authentication, the token bucket and the gateway use case. No I/O; imports no twisted.web and no store.
"""
