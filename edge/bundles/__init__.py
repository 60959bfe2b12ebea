"""Build-time work for the device: the MediaPipe landmark bundles, built offline (``cryedge models fetch``).

Not a pipeline stage. It lives in the runtime package because a Pi builds its own bundles, without
TensorFlow: ``build`` fetches the pinned wheel and writes the bundles, ``graph_edits`` adapts its
models, ``cli`` is the command.
"""
