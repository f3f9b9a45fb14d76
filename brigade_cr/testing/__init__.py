"""
Test support shipped with the package: in-memory stores that the contract suite checks.
"""
