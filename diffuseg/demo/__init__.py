"""The diffuseg web demo (Gradio; ``pip install "diffuseg[demo]"``).

``build_app()`` returns the ``gr.Blocks``; ``launch()`` serves it on 127.0.0.1 by default;
``diffuseg demo`` on the command line does the same.
"""

from diffuseg.demo.app import DemoState, build_app, launch

__all__ = ["DemoState", "build_app", "launch"]
