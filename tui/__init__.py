"""`localllm chat`: the Textual app. Installed as ``localllm.tui``; the only place that imports textual.

The app only renders: conversations, context accounting and the store live in
``localllm.session``, downloads in ``localllm.store``, models in ``localllm.model``.
"""

from .app import ChatApp

__all__ = ["ChatApp"]
