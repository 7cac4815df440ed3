"""The web app (``medground serve``): upload a radiograph, type phrases or paste a report, see where they are.

``session`` holds what the page does, in plain Python (tested without a browser); ``page`` lays it out with Gradio;
``server`` starts it. Gradio is imported only by ``page``, after ``server`` has pointed its upload folder at a
temporary folder of this run and switched its analytics off.
"""
