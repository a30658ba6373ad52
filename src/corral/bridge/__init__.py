"""Code that runs INSIDE a sandbox on the image's own interpreter (not the agent's).

:mod:`corral.bridge.kernel_bridge` is shipped in the agent bundle (``/.corral``) and run by
the image's ``python3`` as a plain script: it imports nothing from Corral, only the
standard library, the image's ``jupyter_client``/``pyzmq`` (for Python contexts) and its
sibling :mod:`corral.bridge.bash_shell` (Bash contexts), which it loads by path.
"""
