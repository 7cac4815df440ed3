"""Model families behind one seam (``base.Backbone``), the model directory format and the loader."""
