from .markdown import render_markdown

__all__ = ["render_markdown"]
