"""The in-sandbox agent: runs as the sandbox's first process and serves the node.

Everything under this package runs INSIDE the sandbox, on an interpreter the node brings
along (images may have no Python at all). It uses only the standard library and
:mod:`corral.api`; it never imports the rest of Corral.
"""
