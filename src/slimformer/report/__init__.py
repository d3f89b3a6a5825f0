from .files import write_report
from .html import render_comparison, render_html
from .markdown import render_markdown

__all__ = ["render_markdown", "render_html", "render_comparison", "write_report"]
